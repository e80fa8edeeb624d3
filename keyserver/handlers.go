package keyserver

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/keysystem/keysystem/admission"
	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/tokens"
)

func (s *Server) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET "+api.PathHealth, s.handleHealth)
	m.HandleFunc("GET "+api.PathCA+"{authority}", s.handleCA)
	m.HandleFunc("POST "+api.PathAdmit, s.limit(s.handleAdmit))
	m.HandleFunc("POST "+api.PathRenew, s.limit(s.nodeRenewal(s.handleRenew)))
	m.HandleFunc("GET "+api.PathNode, s.node(s.handleSelf))
	m.HandleFunc("POST "+api.PathTokens, s.admin(s.handleTokenIssue))
	m.HandleFunc("GET "+api.PathTokens, s.admin(s.handleTokenList))
	m.HandleFunc("POST "+api.PathTokens+"/{id}"+api.PathRevoke, s.admin(s.handleTokenRevoke))
	m.HandleFunc("GET "+api.PathNodes, s.admin(s.handleNodeList))
	m.HandleFunc("POST "+api.PathNodes+"/{name}"+api.PathRevoke, s.admin(s.handleNodeRevoke))
	m.HandleFunc("POST "+api.PathSign+"{grant}", s.limit(s.node(s.handleSign)))
	m.HandleFunc("GET "+api.PathStatic+"{name}", s.node(s.handleStatic))
	m.HandleFunc("GET "+api.PathGrants, s.node(s.handleGrants))
	m.HandleFunc("GET "+api.PathGrants+"/{name}", s.node(s.handleGrant))
	m.HandleFunc("GET "+api.PathPolicy, s.admin(s.handlePolicyStatus))
	m.HandleFunc("POST "+api.PathPolicyReload, s.admin(s.handlePolicyReload))
	m.HandleFunc("POST "+api.PathPolicyExplain, s.admin(s.handlePolicyExplain))
	m.HandleFunc("GET "+api.PathCerts+"{label}/{file}", s.node(s.handleACMEFile))
	m.HandleFunc("GET "+api.PathCerts+"{label}/{family}/{file}", s.node(s.handleACMEFile))
	m.HandleFunc("GET "+api.PathACME, s.admin(s.handleACMEStatusAll))
	m.HandleFunc("GET "+api.PathACME+"/{label}", s.admin(s.handleACMEStatus))
	m.HandleFunc("POST "+api.PathACME+"/{label}"+api.PathACMERenew, s.admin(s.handleACMERenew))
	m.HandleFunc("GET "+PathMetrics, s.admin(s.handleMetrics))
	if s.cfg.Profiling {
		m.HandleFunc("GET "+PathProfile+"{name}", s.admin(s.handleProfile))
	}
	s.mux = m
}

// ServeHTTP bounds every request body and answers unknown routes in JSON.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, api.MaxBodyBytes)
	h, pattern := s.mux.Handler(r)
	if pattern == "" {
		// The mux's own 404/405 answers are plain text; ours are JSON.
		rec := &statusRecorder{header: http.Header{}}
		h.ServeHTTP(rec, r)
		code, status := api.CodeNotFound, http.StatusNotFound
		if rec.status == http.StatusMethodNotAllowed {
			code, status = api.CodeMethodNotAllowed, http.StatusMethodNotAllowed
			w.Header().Set("Allow", rec.header.Get("Allow"))
		}
		writeError(w, &api.Error{Status: status, Code: code, Message: http.StatusText(status)})
		return
	}
	s.mux.ServeHTTP(w, r) // not h: only the mux fills in r.PathValue
}

type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(status int)      { r.status = status }

// decode reads exactly one JSON object into v, refusing unknown fields,
// trailing data and bodies over the limit.
func decode(r *http.Request, v any) *api.Error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("trailing data after the JSON object")
	}
	if err == nil {
		if _, e := dec.Token(); errors.As(e, new(*http.MaxBytesError)) {
			err = e // over the limit after the object (e.g. padding): still too large
		} else if e != io.EOF {
			err = errors.New("trailing data after the JSON object")
		}
	}
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tooBig):
		return &api.Error{Status: http.StatusRequestEntityTooLarge, Code: api.CodeBodyTooLarge, Message: fmt.Sprintf("request body over %d bytes", api.MaxBodyBytes)}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Message: "request body is empty or truncated"}
	}
	return &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Message: "malformed request: " + err.Error()}
}

// remoteAddr is the client's address; net/http sets RemoteAddr to ip:port
// for every TCP connection, so a parse failure means no address at all.
func remoteAddr(r *http.Request) netip.Addr {
	ap, _ := netip.ParseAddrPort(r.RemoteAddr)
	return ap.Addr().Unmap()
}

var (
	errNodeCertRequired  = &api.Error{Status: http.StatusUnauthorized, Code: api.CodeCertRequired, Message: "a client certificate (the node's CGC) is required"}
	errAdminCertRequired = &api.Error{Status: http.StatusUnauthorized, Code: api.CodeCertRequired, Message: "an administrator's client certificate is required"}
	errAdminCertInvalid  = &api.Error{Status: http.StatusForbidden, Code: api.CodeCertInvalid, Message: "client certificate not accepted for this endpoint"}
	errAdminCertExpired  = &api.Error{Status: http.StatusUnauthorized, Code: api.CodeCertExpired, Message: "client certificate expired or not yet valid"}
)

// node wraps a handler that only a node holding a current CGC may call.
func (s *Server) node(h func(http.ResponseWriter, *http.Request, *admission.Caller)) http.HandlerFunc {
	return s.nodeAuth(s.adm.Authenticate, h)
}

// nodeRenewal is node for the renewal endpoint, which also takes a CGC
// that expired within the policy's renew_after_expiry window.
func (s *Server) nodeRenewal(h func(http.ResponseWriter, *http.Request, *admission.Caller)) http.HandlerFunc {
	return s.nodeAuth(s.adm.AuthenticateRenewal, h)
}

type authenticator func(context.Context, []*x509.Certificate) (*admission.Caller, error)

func (s *Server) nodeAuth(auth authenticator, h func(http.ResponseWriter, *http.Request, *admission.Caller)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		chain := peerChain(r)
		if len(chain) == 0 {
			s.refuse(w, r, AuditEvent{Event: EventAuthDeny}, errNodeCertRequired)
			return
		}
		caller, err := auth(r.Context(), chain)
		if errors.Is(err, admission.ErrCertSuperseded) {
			// The certificate is genuine (it verified), so the node it names
			// is known: an older CGC of it is in use, perhaps by a thief.
			s.refuse(w, r, AuditEvent{Event: EventKeyTheft, Node: chain[0].Subject.CommonName, Serial: admission.SerialHex(chain[0])}, err)
			return
		}
		if err != nil {
			s.refuse(w, r, AuditEvent{Event: EventAuthDeny}, claimed(chain[0], err))
			return
		}
		h(w, r, caller)
	}
}

// admin wraps a handler that only an administrator may call; it passes the
// administrator's name.
func (s *Server) admin(h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		chain := peerChain(r)
		if len(chain) == 0 {
			s.refuse(w, r, AuditEvent{Event: EventAuthDeny}, errAdminCertRequired)
			return
		}
		if err := s.cfg.Admin.Verify(chain[0], x509.ExtKeyUsageClientAuth); err != nil {
			kind := errAdminCertInvalid
			var inv x509.CertificateInvalidError
			if errors.As(err, &inv) && inv.Reason == x509.Expired {
				kind = errAdminCertExpired
			}
			s.refuse(w, r, AuditEvent{Event: EventAuthDeny}, claimed(chain[0], fmt.Errorf("%w: %w", kind, err)))
			return
		}
		h(w, r, chain[0].Subject.CommonName)
	}
}

// claimed names, for the audit log, what a refused certificate claimed to
// be; it is not an identity, so it goes into the reason and nowhere else.
func claimed(c *x509.Certificate, err error) error {
	return fmt.Errorf("certificate %q (serial %s): %w", c.Subject.CommonName, admission.SerialHex(c), err)
}

func peerChain(r *http.Request) []*x509.Certificate {
	if r.TLS == nil {
		return nil
	}
	return r.TLS.PeerCertificates
}

// refuse answers a refused or failed request and audits it. e holds what
// is known for certain (the event, an authenticated actor, a node, a token
// id); the address, the code the client gets and the server's own account
// of the reason are filled in here. The client sees only apiError(err).
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, e AuditEvent, err error) {
	ae := apiError(err)
	e.Remote, e.Code = r.RemoteAddr, ae.Code
	e.Reason = r.Method + " " + r.URL.Path + ": " + err.Error()
	s.record(e)
	if ae.Status >= http.StatusInternalServerError {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeError(w, ae)
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.Health{Status: "ok"})
}

// handleCA serves an authority's public certificates, root last, as PEM:
// a built-in one or one the policy names.
func (s *Server) handleCA(w http.ResponseWriter, r *http.Request) {
	var a *authority.Authority
	switch name := r.PathValue("authority"); name {
	case authority.KeyGranting:
		a = s.cfg.KeyGranting
	case authority.Server:
		a = s.cfg.Server
	case authority.Admin:
		a = s.cfg.Admin
	default:
		a = s.policy.Load().auths[name]
	}
	if a == nil {
		writeError(w, &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound, Message: "no such authority"})
		return
	}
	w.Header().Set("Content-Type", "application/pem-certificate-chain")
	w.Write(authority.EncodePEM(append(slices.Clone(a.Chain()), a.Root())...))
}

func (s *Server) handleAdmit(w http.ResponseWriter, r *http.Request) {
	var req api.AdmitRequest
	if e := decode(r, &req); e != nil {
		s.refuse(w, r, AuditEvent{Event: EventAdmitDeny}, e)
		return
	}
	// The token's public id is safe to audit; its secret never is.
	var tokenID string
	if t, err := tokens.Parse(req.Token); err == nil {
		tokenID = t.ID
	}
	issued, err := s.adm.Admit(r.Context(), admission.AdmitRequest{
		Token:  req.Token,
		Node:   req.Node,
		CSR:    []byte(req.CSR),
		Source: remoteAddr(r),
	})
	if err != nil {
		s.refuse(w, r, AuditEvent{Event: EventAdmitDeny, TokenID: tokenID}, fmt.Errorf("claimed node %q: %w", req.Node, err))
		return
	}
	ev := EventAdmit
	if issued.Replay {
		ev = EventAdmitReplay
	}
	s.record(AuditEvent{Event: ev, Node: issued.Node, TokenID: tokenID, Serial: admission.SerialHex(issued.Cert), Remote: r.RemoteAddr})
	s.log.Info("node admitted", "node", issued.Node, "token_id", tokenID, "serial", admission.SerialHex(issued.Cert), "replay", issued.Replay)
	writeJSON(w, http.StatusOK, certResponse(issued))
}

func (s *Server) handleRenew(w http.ResponseWriter, r *http.Request, caller *admission.Caller) {
	var req api.RenewRequest
	deny := AuditEvent{Event: EventRenewDeny, Actor: "node:" + caller.Node.Name, Node: caller.Node.Name, Serial: caller.Serial}
	if e := decode(r, &req); e != nil {
		s.refuse(w, r, deny, e)
		return
	}
	issued, err := s.adm.Renew(r.Context(), caller, []byte(req.CSR))
	if err != nil {
		if errors.Is(err, admission.ErrCertSuperseded) {
			deny.Event = EventKeyTheft
		}
		s.refuse(w, r, deny, err)
		return
	}
	reason := "replaces " + caller.Serial
	if caller.Retry {
		reason = "repeats the renewal from " + caller.Serial + " for the same key"
	}
	s.record(AuditEvent{Event: EventRenew, Actor: "node:" + issued.Node, Node: issued.Node, Serial: admission.SerialHex(issued.Cert), Remote: r.RemoteAddr, Reason: reason})
	writeJSON(w, http.StatusOK, certResponse(issued))
}

func (s *Server) handleSelf(w http.ResponseWriter, r *http.Request, caller *admission.Caller) {
	writeJSON(w, http.StatusOK, nodeInfo(caller.Node))
}

func (s *Server) handleTokenIssue(w http.ResponseWriter, r *http.Request, admin string) {
	var req api.TokenRequest
	deny := AuditEvent{Event: EventAdminDeny, Actor: "admin:" + admin}
	if e := decode(r, &req); e != nil {
		s.refuse(w, r, deny, e)
		return
	}
	pol := s.policy.Load().pol
	for _, g := range req.Groups {
		if !pol.HasGroup(g) {
			s.refuse(w, r, deny, &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest,
				Message: fmt.Sprintf("group %q is not in the policy (its groups: %s)", g, strings.Join(pol.Groups(), ", "))})
			return
		}
	}
	tok, rec, err := s.adm.IssueToken(r.Context(), admission.TokenSpec{
		Node:    strings.TrimSpace(req.Node),
		TTL:     req.TTL.Std(),
		IPs:     req.IPs,
		Groups:  slices.Compact(slices.Sorted(slices.Values(req.Groups))),
		Creator: admin,
	})
	if err != nil {
		s.refuse(w, r, deny, err)
		return
	}
	reason := "expires " + rec.Expires.UTC().Format("2006-01-02T15:04:05Z")
	if len(rec.Groups) > 0 {
		reason += "; groups " + strings.Join(rec.Groups, ",")
	}
	if len(rec.IPs) > 0 {
		reason += "; addresses " + strings.Join(rec.IPs, ",")
	}
	s.record(AuditEvent{Event: EventTokenIssue, Actor: "admin:" + admin, Node: rec.Node, TokenID: rec.ID, Remote: r.RemoteAddr, Reason: reason})
	writeJSON(w, http.StatusCreated, api.TokenResponse{Token: tok.String(), Info: tokenInfo(rec, s.cfg.Now())})
}

func (s *Server) handleTokenList(w http.ResponseWriter, r *http.Request, admin string) {
	recs, err := s.adm.ListTokens(r.Context())
	if err != nil {
		s.refuse(w, r, AuditEvent{Event: EventAdminDeny, Actor: "admin:" + admin}, err)
		return
	}
	out := api.TokenList{Tokens: make([]api.TokenInfo, 0, len(recs))}
	now := s.cfg.Now()
	for _, rec := range recs {
		out.Tokens = append(out.Tokens, tokenInfo(rec, now))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleTokenRevoke(w http.ResponseWriter, r *http.Request, admin string) {
	id := r.PathValue("id")
	deny := AuditEvent{Event: EventAdminDeny, Actor: "admin:" + admin}
	if !tokens.ValidID(id) {
		s.refuse(w, r, deny, &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Message: "malformed token id"})
		return
	}
	deny.TokenID = id
	rec, err := s.adm.RevokeToken(r.Context(), id)
	if err != nil {
		s.refuse(w, r, deny, err)
		return
	}
	s.record(AuditEvent{Event: EventTokenRevoke, Actor: "admin:" + admin, Node: rec.Node, TokenID: id, Remote: r.RemoteAddr})
	writeJSON(w, http.StatusOK, tokenInfo(rec, s.cfg.Now()))
}

// handleNodeList streams the inventory as the store gives it, a page at a
// time, so that a fleet of 100,000 nodes is never all in the keyserver's
// memory at once. A store failure before the first node is an error
// answer; after it, it can only cut the answer short, which the client
// sees as JSON that does not parse.
func (s *Server) handleNodeList(w http.ResponseWriter, r *http.Request, admin string) {
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	started := false
	err := s.adm.EachNode(r.Context(), func(n admission.Node) error {
		if !started {
			w.Header().Set("Content-Type", api.ContentJSON)
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusOK)
			bw.WriteString(`{"nodes":[`)
			started = true
		} else {
			bw.WriteByte(',')
		}
		return enc.Encode(nodeInfo(n))
	})
	switch {
	case err != nil && !started:
		s.refuse(w, r, AuditEvent{Event: EventAdminDeny, Actor: "admin:" + admin}, err)
	case err != nil:
		s.log.Error("listing nodes: cut short", "err", err)
	case !started:
		writeJSON(w, http.StatusOK, api.NodeList{Nodes: []api.NodeInfo{}})
	default:
		bw.WriteString("]}\n")
		bw.Flush()
	}
}

func (s *Server) handleNodeRevoke(w http.ResponseWriter, r *http.Request, admin string) {
	name := r.PathValue("name")
	n, err := s.adm.RevokeNode(r.Context(), name)
	if err != nil {
		s.refuse(w, r, AuditEvent{Event: EventAdminDeny, Actor: "admin:" + admin}, err)
		return
	}
	s.record(AuditEvent{Event: EventNodeRevoke, Actor: "admin:" + admin, Node: name, Serial: n.Serial, Remote: r.RemoteAddr})
	s.log.Info("node revoked", "node", name, "by", admin)
	writeJSON(w, http.StatusOK, nodeInfo(n))
}

func certResponse(iss *admission.Issued) api.CertificateResponse {
	return api.CertificateResponse{
		Node:        iss.Node,
		Certificate: string(authority.EncodePEM(iss.Cert)),
		Chain:       string(authority.EncodePEM(iss.Chain...)),
		Serial:      admission.SerialHex(iss.Cert),
		NotBefore:   iss.Cert.NotBefore,
		NotAfter:    iss.Cert.NotAfter,
	}
}

func tokenInfo(r tokens.Record, now time.Time) api.TokenInfo {
	state := string(r.State)
	if r.State == tokens.StatePending && !now.Before(r.Expires) {
		state = "expired"
	}
	return api.TokenInfo{
		ID:         r.ID,
		Node:       r.Node,
		IPs:        r.IPs,
		Groups:     r.Groups,
		Creator:    r.Creator,
		Created:    r.Created,
		Expires:    r.Expires,
		State:      state,
		RedeemedAt: r.RedeemedAt,
	}
}

func nodeInfo(n admission.Node) api.NodeInfo {
	return api.NodeInfo{
		Name:           n.Name,
		IPs:            n.IPs,
		Groups:         n.Groups,
		AdmittedAt:     n.AdmittedAt,
		Serial:         n.Serial,
		NotAfter:       n.NotAfter,
		PreviousSerial: n.Previous,
		Renewals:       n.Renewals,
		RenewedAt:      n.RenewedAt,
		Revoked:        n.Revoked,
		RevokedAt:      n.RevokedAt,
	}
}
