package keyclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/keysystem/keysystem/keyserver/api"
)

// ErrNoCGC means an item cannot be kept because the node holds no valid
// CGC yet (not admitted) or any more (expired); items wait for one.
var ErrNoCGC = errors.New("keyclient: waiting for the node's CGC (not admitted yet, or expired)")

// remote is what the items need from the keyservers. *Client's HTTPS
// calls over mutual TLS with the CGC implement it; the package's tests put
// a real authority behind it.
type remote interface {
	// grant is what the policy grants this node under name.
	grant(ctx context.Context, name string) (*api.GrantInfo, error)
	// sign asks for the grant's certificate for the CSR's key.
	sign(ctx context.Context, grant, csrPEM string) (*api.CertificateResponse, error)
	// static fetches a static grant's content and its digest as sent
	// (sha256:<hex>), unchecked; at most MaxStaticBytes+1 bytes are read.
	static(ctx context.Context, name string) (body []byte, digest string, err error)
	// acmeFile fetches one file of an ACME label: fullchain.pem or
	// key.pem, of the key type family ("ecdsa", "rsa"), or of the label's
	// first key type when family is "". A non-empty ifNoneMatch is sent
	// as If-None-Match; the keyserver's 304 is an answer with NotModified
	// set and no body. At most maxACMEBytes+1 bytes are read.
	acmeFile(ctx context.Context, label, family, file, ifNoneMatch string) (*acmeAnswer, error)
}

// acmeAnswer is the keyserver's answer for one file of an ACME label.
type acmeAnswer struct {
	NotModified bool
	Body        []byte
	// ETag is the same for a certificate's files and its key: a
	// certificate and the key it was fetched with belong together when
	// their tags (and versions) are equal.
	ETag    string
	Version int // 0: the keyserver's self-signed placeholder
}

// maxACMEBytes is the largest file of an ACME label the keyclient reads:
// a full chain of a few certificates, or one key, is a few kilobytes.
const maxACMEBytes = 64 << 10

type httpRemote struct{ c *Client }

var _ remote = httpRemote{}

func (r httpRemote) grant(ctx context.Context, name string) (*api.GrantInfo, error) {
	var g api.GrantInfo
	if err := r.c.call(ctx, http.MethodGet, api.PathGrants+"/"+url.PathEscape(name), nil, &g, withCGC); err != nil {
		return nil, fmt.Errorf("keyclient: grant %s: %w", name, err)
	}
	return &g, nil
}

func (r httpRemote) sign(ctx context.Context, grant, csrPEM string) (*api.CertificateResponse, error) {
	var resp api.CertificateResponse
	if err := r.c.call(ctx, http.MethodPost, api.PathSign+url.PathEscape(grant), api.SignRequest{CSR: csrPEM}, &resp, withCGC); err != nil {
		return nil, fmt.Errorf("keyclient: sign %s: %w", grant, err)
	}
	return &resp, nil
}

func (r httpRemote) static(ctx context.Context, name string) ([]byte, string, error) {
	var body []byte
	var digest string
	err := r.c.roundTrip(ctx, http.MethodGet, api.PathStatic+url.PathEscape(name), nil, nil, withCGC, func(resp *http.Response) error {
		if resp.StatusCode/100 != 2 {
			return api.ReadResponse(resp, 1<<20, nil) // an *api.Error
		}
		defer resp.Body.Close()
		var err error
		body, err = io.ReadAll(io.LimitReader(resp.Body, api.MaxStaticBytes+1))
		if err != nil {
			return fmt.Errorf("keyclient: reading static %s: %w", name, err)
		}
		digest = resp.Header.Get(api.HeaderDigest)
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("keyclient: static %s: %w", name, err)
	}
	return body, digest, nil
}

// acmePath is the keyserver's path of an ACME label's file.
func acmePath(label, family, file string) string {
	p := api.PathCerts + url.PathEscape(label) + "/"
	switch {
	case family != "":
		return p + url.PathEscape(family) + "/" + file
	case file == acmeKeyFile:
		return p + "private.pem"
	}
	return p + "public.pem"
}

// The files of a key type an acme item fetches; cert.pem and chain.pem
// are cut from the full chain here, so that they cannot be of another
// version than it.
const (
	acmeFullchainFile = "fullchain.pem"
	acmeKeyFile       = "key.pem"
)

func (r httpRemote) acmeFile(ctx context.Context, label, family, file, ifNoneMatch string) (*acmeAnswer, error) {
	var a acmeAnswer
	var hdr http.Header
	if ifNoneMatch != "" {
		hdr = http.Header{"If-None-Match": {ifNoneMatch}}
	}
	path := acmePath(label, family, file)
	err := r.c.roundTrip(ctx, http.MethodGet, path, nil, hdr, withCGC, func(resp *http.Response) error {
		switch {
		case resp.StatusCode == http.StatusNotModified:
			resp.Body.Close()
			a.NotModified = true
		case resp.StatusCode/100 != 2:
			return api.ReadResponse(resp, 1<<20, nil) // an *api.Error
		default:
			defer resp.Body.Close()
			var err error
			if a.Body, err = io.ReadAll(io.LimitReader(resp.Body, maxACMEBytes+1)); err != nil {
				return fmt.Errorf("reading the answer: %w", err)
			}
			if len(a.Body) > maxACMEBytes {
				return fmt.Errorf("answer larger than %d bytes", maxACMEBytes)
			}
		}
		a.ETag = resp.Header.Get("ETag")
		v, err := strconv.Atoi(resp.Header.Get(api.HeaderACMEVersion))
		switch {
		case a.ETag == "":
			return errors.New("answer without an ETag")
		case err != nil || v < 0:
			return fmt.Errorf("answer without a valid %s header", api.HeaderACMEVersion)
		}
		a.Version = v
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("keyclient: acme %s: GET %s: %w", label, path, err)
	}
	return &a, nil
}

// checkStatic accepts a static file's content only when it fits the limit
// and matches the digest the keyserver sent with it; a file cut short or
// changed on the way is never written.
func checkStatic(body []byte, digest string) error {
	if len(body) > api.MaxStaticBytes {
		return fmt.Errorf("keyclient: static file larger than %d bytes", api.MaxStaticBytes)
	}
	if digest == "" {
		return fmt.Errorf("keyclient: static file came without its %s header", api.HeaderDigest)
	}
	if got := api.Digest(body); !strings.EqualFold(strings.TrimSpace(digest), got) {
		return fmt.Errorf("keyclient: static file does not match its digest (sent %s, content is %s)", digest, got)
	}
	return nil
}
