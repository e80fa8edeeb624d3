package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/keysystem/keysystem/keyserver"
	"github.com/keysystem/keysystem/keyserver/api"
)

// adminClient calls the keyserver's admin API with the administrator's
// client certificate.
type adminClient struct {
	cfg *keyserver.AdminConfig
	hc  *http.Client
}

func (e *env) client() (*adminClient, error) {
	if e.config == "" {
		return nil, usageError{errors.New("no configuration: give --config DIR/keyctl.yaml or set KEYCTL_CONFIG")}
	}
	cfg, err := keyserver.LoadAdminConfig(e.config)
	if err != nil {
		return nil, usageError{err}
	}
	tlsc, err := cfg.TLSConfig()
	if err != nil {
		return nil, usageError{err}
	}
	return &adminClient{cfg: cfg, hc: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsc, ForceAttemptHTTP2: true},
	}}, nil
}

// do sends one request to the first keyserver that can be reached.
func (c *adminClient) do(e *env, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	var errs []error
	for _, s := range c.cfg.Servers {
		req, err := http.NewRequestWithContext(e.ctx, method, s+path, bytes.NewReader(body))
		if err != nil {
			return usageError{err}
		}
		req.Header.Set("Content-Type", api.ContentJSON)
		resp, err := c.hc.Do(req)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// A node list of a large fleet is long: allow tens of megabytes.
		return api.ReadResponse(resp, 64<<20, out)
	}
	return errors.Join(errs...)
}
