package keyserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/admission"
	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/acme/zone"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/policy"
)

// ACMEConfig turns on the ACME side: the policy's public certificates,
// obtained and renewed by the keyserver and handed to the nodes each
// label names.
type ACMEConfig struct {
	// KEK is the key-encryption key that seals the certificates' private
	// keys in the store (acme.LoadKEK).
	KEK []byte
	// HTTP01Probe is where the keyserver checks that an http-01 answer is
	// served before telling the CA (host:port: a front end, or this
	// keyserver's own http-01 listener); "" leaves http-01 off.
	HTTP01Probe string
	// Staging holds a new certificate back this long after its NotBefore,
	// for nodes whose clocks run behind; default DefaultACMEStaging.
	Staging         time.Duration
	MaxOrdersPerDay int           // default acme.DefaultMaxOrdersPerDay
	CheckInterval   time.Duration // default acme.DefaultCheckInterval

	// DNSZone is the zone delegated to the keyservers' own DNS server
	// (ServeDNS), where dns-01 answers go for accounts without a DNS
	// provider; "" leaves that off. DNSNameservers are the zone's NS
	// names. DNSResolvers are the recursive resolvers the dns-01 check
	// of DNS providers asks (default: /etc/resolv.conf's).
	DNSZone        string
	DNSNameservers []string
	DNSResolvers   []string
}

// DefaultACMEStaging is how long a new ACME certificate is held back by
// default.
const DefaultACMEStaging = time.Hour

// Audit events of ACME certificates.
const (
	EventACMEKey   = "acme.key"   // a node fetched a version of a label's private key it did not have
	EventACMEDeny  = "acme.deny"  // a node refused a label's files
	EventACMERenew = "acme.renew" // an administrator forced a renewal
)

func (s *Server) newACME() error {
	c := s.cfg.ACME
	if c == nil {
		return nil
	}
	sealer, err := acme.NewSealer(c.KEK, s.cfg.Rand)
	if err != nil {
		return err
	}
	if c.Staging == 0 {
		c.Staging = DefaultACMEStaging
	}
	s.acme, err = acme.NewManager(acme.Config{
		Store:           s.cfg.Store,
		Sealer:          sealer,
		Policy:          func() *policy.Policy { return s.policy.Load().pol },
		HTTP01:          &acme.HTTP01Provider{Store: s.cfg.Store, ProbeAddr: c.HTTP01Probe},
		Staging:         c.Staging,
		MaxOrdersPerDay: c.MaxOrdersPerDay,
		CheckInterval:   c.CheckInterval,
		DNSZone:         c.DNSZone,
		DNSResolvers:    c.DNSResolvers,
		Now:             s.cfg.Now,
		Log:             s.log.With("part", "acme"),
	})
	return err
}

// checkACME refuses a policy whose ACME certificates this keyserver
// cannot obtain as configured.
func (s *Server) checkACME(p *policy.Policy) error {
	labels := p.ACMELabels()
	if len(labels) == 0 {
		return nil
	}
	if s.acme == nil {
		return policy.Errors{{File: p.File(), Line: p.ACMECert(labels[0]).Line,
			Msg: "the policy has acme certificates, but this keyserver has no acme section in its configuration (keyserver.yaml)"}}
	}
	var probs policy.Errors
	if err := acme.CheckPolicy(p); err != nil {
		var pe policy.Errors
		if !errors.As(err, &pe) {
			return err
		}
		probs = append(probs, pe...)
	}
	for _, l := range labels {
		c := p.ACMECert(l)
		switch {
		case c.Challenge == policy.ChallengeHTTP01 && s.cfg.ACME.HTTP01Probe == "":
			probs = append(probs, policy.Problem{File: p.File(), Line: c.Line,
				Msg: fmt.Sprintf("acme certificate %q: http-01 needs acme.http01_listen in keyserver.yaml, and front ends proxying %s to it", l, acme.ChallengePath)})
		case c.Challenge == policy.ChallengeDNS01 && p.ACMEAccount(c.Account).DNS == nil && s.cfg.ACME.DNSZone == "":
			probs = append(probs, policy.Problem{File: p.File(), Line: c.Line,
				Msg: fmt.Sprintf("acme certificate %q: dns-01 without a dns provider on account %q needs the keyserver's own DNS server: acme.dns in keyserver.yaml", l, c.Account)})
		}
	}
	if len(probs) > 0 {
		return probs
	}
	return nil
}

// ServeHTTP01 answers ACME http-01 challenges on l (plain HTTP) until ctx
// ends.
func (s *Server) ServeHTTP01(ctx context.Context, l net.Listener) error {
	srv := acme.NewHTTP01Server(s.cfg.Store, s.log.With("part", "acme"))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("keyserver: http-01 listener: %w", err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(shutCtx)
	<-errc
	return err
}

// ServeDNS answers the delegated dns-01 zone (ACMEConfig.DNSZone) over
// UDP on pc and TCP on l until ctx ends.
func (s *Server) ServeDNS(ctx context.Context, pc net.PacketConn, l net.Listener) error {
	c := s.cfg.ACME
	if c == nil || c.DNSZone == "" {
		return errors.New("keyserver: no acme dns zone configured")
	}
	zs, err := zone.NewServer(zone.Config{Zone: c.DNSZone, Nameservers: c.DNSNameservers, Store: s.cfg.Store, Now: s.cfg.Now, Log: s.log.With("part", "acme-dns")})
	if err != nil {
		return fmt.Errorf("keyserver: %w", err)
	}
	return zs.Serve(ctx, pc, l)
}

// certFiles are the files of a label's key type a node may fetch.
var certFiles = []string{"cert.pem", "chain.pem", "fullchain.pem", "key.pem"}

// handleACMEFile serves a node one file of a label it is authorized for:
// PathCerts/{label}/public.pem or private.pem (the label's first key
// type), or PathCerts/{label}/{ecdsa|rsa}/{file} for one key type.
func (s *Server) handleACMEFile(w http.ResponseWriter, r *http.Request, caller *admission.Caller) {
	label, family, file := r.PathValue("label"), r.PathValue("family"), r.PathValue("file")
	node := caller.Node.Name
	deny := func(err error) {
		s.refuse(w, r, AuditEvent{Event: EventACMEDeny, Actor: "node:" + node, Node: node, Serial: caller.Serial, Grant: "acme:" + label}, err)
	}
	st := s.policy.Load()
	c := st.pol.ACMECert(label)
	if c == nil || s.acme == nil {
		deny(fmt.Errorf("%w: no acme certificate %q", policy.ErrUnknownGrant, label))
		return
	}
	if _, err := st.pol.ACMEFor(c, facts(caller.Node)); err != nil {
		deny(err)
		return
	}
	keyType := c.KeyTypes[0]
	switch {
	case family == "" && file == "public.pem":
		file = "fullchain.pem"
	case family == "" && file == "private.pem":
		file = "key.pem"
	case family != "" && slices.Contains(certFiles, file):
		i := slices.IndexFunc(c.KeyTypes, func(kt string) bool { return strings.HasPrefix(kt, family+"-") })
		if family != "ecdsa" && family != "rsa" || i < 0 {
			writeError(w, &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound,
				Message: fmt.Sprintf("acme certificate %q is issued in %s, not %s", label, strings.Join(c.KeyTypes, " and "), family)})
			return
		}
		keyType = c.KeyTypes[i]
	default:
		writeError(w, &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound,
			Message: "no such file: want public.pem, private.pem, or {ecdsa|rsa}/{cert,chain,fullchain,key}.pem"})
		return
	}
	served, err := s.acme.Get(r.Context(), label, keyType)
	if err != nil {
		deny(err)
		return
	}
	// One tag for a certificate and its key, so a client can tell that
	// the key it fetched is the certificate's: both change together.
	sum := sha256.Sum256(served.Fullchain)
	etag := `"` + hex.EncodeToString(sum[:12]) + `"`
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Cache-Control", "no-store")
	h.Set(api.HeaderACMEVersion, strconv.Itoa(served.Version))
	if file == "key.pem" && !served.Placeholder {
		changed, err := s.acme.RecordFetch(r.Context(), label, node, served.Version, keyType)
		if err != nil {
			s.log.Warn("acme: recording a fetch", "label", label, "node", node, "err", err)
		}
		if changed {
			s.record(AuditEvent{Event: EventACMEKey, Actor: "node:" + node, Node: node, Serial: caller.Serial, Grant: "acme:" + label,
				Reason: fmt.Sprintf("version %d, %s", served.Version, keyType)})
		}
	}
	if inm := r.Header.Get("If-None-Match"); inm != "" && inm == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	var body []byte
	switch file {
	case "fullchain.pem":
		body = served.Fullchain
	case "key.pem":
		body = served.Key
	default:
		chain, err := pemutil.ParseCertificateBundle(served.Fullchain)
		if err != nil || len(chain) == 0 {
			s.refuse(w, r, AuditEvent{Event: EventACMEDeny, Node: node}, fmt.Errorf("acme: %s: stored chain: %v", label, err))
			return
		}
		if file == "cert.pem" {
			body = authority.EncodePEM(chain[0])
		} else {
			body = authority.EncodePEM(chain[1:]...)
		}
	}
	h.Set("Content-Type", "application/x-pem-file")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

func (s *Server) acmeLabelError(err error) *api.Error {
	switch {
	case s.acme == nil:
		return &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound, Message: "this keyserver has no acme section in keyserver.yaml"}
	case errors.Is(err, acme.ErrUnknownLabel):
		return &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound, Message: strings.TrimPrefix(err.Error(), "acme: ")}
	}
	return nil
}

func (s *Server) handleACMEStatusAll(w http.ResponseWriter, r *http.Request, admin string) {
	if s.acme == nil {
		writeJSON(w, http.StatusOK, api.ACMEStatusList{Labels: []api.ACMEStatus{}})
		return
	}
	list, err := s.acme.StatusAll(r.Context())
	if err != nil {
		s.refuse(w, r, AuditEvent{Event: EventAdminDeny, Actor: "admin:" + admin}, err)
		return
	}
	writeJSON(w, http.StatusOK, api.ACMEStatusList{Labels: list})
}

func (s *Server) handleACMEStatus(w http.ResponseWriter, r *http.Request, admin string) {
	var st *api.ACMEStatus
	err := errors.New("acme off")
	if s.acme != nil {
		st, err = s.acme.Status(r.Context(), r.PathValue("label"))
	}
	if e := s.acmeLabelError(err); e != nil {
		writeError(w, e)
		return
	}
	if err != nil {
		s.refuse(w, r, AuditEvent{Event: EventAdminDeny, Actor: "admin:" + admin}, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) handleACMERenew(w http.ResponseWriter, r *http.Request, admin string) {
	label := r.PathValue("label")
	err := errors.New("acme off")
	if s.acme != nil {
		err = s.acme.Renew(r.Context(), label)
	}
	if e := s.acmeLabelError(err); e != nil {
		writeError(w, e)
		return
	}
	if err != nil {
		s.refuse(w, r, AuditEvent{Event: EventAdminDeny, Actor: "admin:" + admin}, err)
		return
	}
	s.record(AuditEvent{Event: EventACMERenew, Actor: "admin:" + admin, Grant: "acme:" + label})
	st, err := s.acme.Status(r.Context(), label)
	if err != nil {
		s.refuse(w, r, AuditEvent{Event: EventAdminDeny, Actor: "admin:" + admin}, err)
		return
	}
	writeJSON(w, http.StatusAccepted, st)
}

// PathMetrics serves Prometheus metrics (text format 0.0.4) to
// administrators; a scraper presents an admin certificate.
const PathMetrics = "/metrics"

// handleMetrics writes the ACME labels' state as Prometheus gauges, so an
// alert can fire on a label that fails to renew long before it expires.
func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request, admin string) {
	var labels []api.ACMEStatus
	if s.acme != nil {
		var err error
		if labels, err = s.acme.StatusAll(r.Context()); err != nil {
			s.refuse(w, r, AuditEvent{Event: EventAdminDeny, Actor: "admin:" + admin}, err)
			return
		}
	}
	var b strings.Builder
	gauge := func(name, help string, value func(*api.ACMEStatus) float64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
		for i := range labels {
			fmt.Fprintf(&b, "%s{label=%q} %s\n", name, labels[i].Label, strconv.FormatFloat(value(&labels[i]), 'g', -1, 64))
		}
	}
	unix := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return float64(t.Unix())
	}
	b01 := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	gauge("keysystem_acme_version", "The version of the label's certificates served; 0 before the first (the placeholder).", func(s *api.ACMEStatus) float64 {
		if s.Current == nil {
			return 0
		}
		return float64(s.Current.Number)
	})
	gauge("keysystem_acme_not_after_seconds", "When the served certificate expires, Unix time; 0 before the first.", func(s *api.ACMEStatus) float64 {
		if s.Current == nil {
			return 0
		}
		return unix(s.Current.NotAfter)
	})
	gauge("keysystem_acme_renew_at_seconds", "When the label is due for renewal, Unix time.", func(s *api.ACMEStatus) float64 { return unix(s.RenewAt) })
	gauge("keysystem_acme_next_attempt_seconds", "No order before this Unix time (backing off, or capped); 0 when free to order.", func(s *api.ACMEStatus) float64 { return unix(s.NextAttempt) })
	gauge("keysystem_acme_failures", "Failed orders in a row.", func(s *api.ACMEStatus) float64 { return float64(s.Failures) })
	gauge("keysystem_acme_orders_24h", "Orders in the last 24 hours, one per key type.", func(s *api.ACMEStatus) float64 { return float64(s.OrdersToday) })
	gauge("keysystem_acme_placeholder", "1 while a key type is served as the self-signed placeholder.", func(s *api.ACMEStatus) float64 { return b01(s.Placeholder) })
	gauge("keysystem_acme_nodes_stale", "Nodes whose last fetched version is older than the one served.", func(s *api.ACMEStatus) float64 {
		n := 0
		for _, f := range s.Nodes {
			if f.Stale {
				n++
			}
		}
		return float64(n)
	})
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	w.Header().Set("Cache-Control", "no-store")
	w.Write([]byte(b.String()))
}
