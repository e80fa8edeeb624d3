package keyserver

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/keysystem/keysystem/admission"
	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/policy"
	"github.com/keysystem/keysystem/tokens"
)

// handleSign issues a grant's certificate to a node the grant is for. The
// subject and names come from the grant rendered for the node; the CSR
// gives the key and may add names the grant allows, nothing else.
func (s *Server) handleSign(w http.ResponseWriter, r *http.Request, caller *admission.Caller) {
	node := caller.Node.Name
	grant := r.PathValue("grant")
	deny := AuditEvent{Event: EventSignDeny, Actor: "node:" + node, Node: node, Serial: caller.Serial, Grant: grant}
	var req api.SignRequest
	if e := decode(r, &req); e != nil {
		s.refuse(w, r, deny, e)
		return
	}
	st := s.policy.Load()
	d, err := st.pol.Decide(grant, facts(caller.Node))
	if err == nil && d.Grant.Type != policy.TypeX509 {
		err = fmt.Errorf("%w: %q is a %s grant; fetch it from %s", policy.ErrWrongType, grant, d.Grant.Type, api.PathStatic+grant)
	}
	if err == nil {
		err = d.Err
	}
	if err != nil {
		s.refuse(w, r, deny, err)
		return
	}
	csr, err := admission.ParseCSR([]byte(req.CSR))
	if err != nil {
		s.refuse(w, r, deny, err)
		return
	}
	c, err := d.Cert.Request(csr)
	if err != nil {
		s.refuse(w, r, deny, err)
		return
	}
	a := st.auths[c.Authority]
	cert, err := a.Sign(authority.Request{
		PublicKey:   csr.PublicKey,
		CommonName:  c.Subject.CommonName,
		Subject:     c.Subject,
		DNSNames:    c.DNSNames,
		IPAddresses: c.IPAddresses,
		URIs:        c.URIs,
		ExtKeyUsage: c.ExtKeyUsage,
		Lifetime:    c.Lifetime,
	})
	if err != nil {
		s.refuse(w, r, deny, err)
		return
	}
	serial := authority.SerialText(cert)
	s.record(AuditEvent{Event: EventSign, Actor: "node:" + node, Node: node, Grant: grant, Serial: serial, Remote: r.RemoteAddr,
		Reason: fmt.Sprintf("%s via %s, authority %s, until %s, subject %s, names %s", grant, d.Via, c.Authority,
			cert.NotAfter.UTC().Format("2006-01-02T15:04:05Z"), cert.Subject, strings.Join(certNames(cert), ","))})
	writeJSON(w, http.StatusOK, api.CertificateResponse{
		Node:        node,
		Grant:       grant,
		Certificate: string(authority.EncodePEM(cert)),
		Chain:       string(authority.EncodePEM(a.Chain()...)),
		Root:        string(authority.EncodePEM(a.Root())),
		Serial:      serial,
		NotBefore:   cert.NotBefore,
		NotAfter:    cert.NotAfter,
	})
}

// handleStatic serves a static grant's file to a node the grant is for.
func (s *Server) handleStatic(w http.ResponseWriter, r *http.Request, caller *admission.Caller) {
	node := caller.Node.Name
	name := r.PathValue("name")
	st := s.policy.Load()
	d, err := st.pol.Decide(name, facts(caller.Node))
	if err == nil && d.Grant.Type != policy.TypeStatic {
		err = fmt.Errorf("%w: %q is an %s grant; ask %s for it", policy.ErrWrongType, name, d.Grant.Type, api.PathSign+name)
	}
	if err != nil {
		s.refuse(w, r, AuditEvent{Event: EventStaticDeny, Actor: "node:" + node, Node: node, Serial: caller.Serial, Grant: name}, err)
		return
	}
	f := st.static[name]
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(f.data)))
	h.Set(api.HeaderDigest, f.digest)
	w.WriteHeader(http.StatusOK)
	w.Write(f.data)
}

// handleGrants tells a node what the policy gives it now, so its keyclient
// can tell a certificate on disk that no longer matches.
func (s *Server) handleGrants(w http.ResponseWriter, r *http.Request, caller *admission.Caller) {
	list := s.policy.Load().explain(facts(caller.Node))
	list.NotGranted = nil // a node learns its own grants, not the others'
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) handleGrant(w http.ResponseWriter, r *http.Request, caller *admission.Caller) {
	st := s.policy.Load()
	d, err := st.pol.Decide(r.PathValue("name"), facts(caller.Node))
	if err != nil {
		node := caller.Node.Name
		s.refuse(w, r, AuditEvent{Event: EventGrantDeny, Actor: "node:" + node, Node: node, Serial: caller.Serial, Grant: r.PathValue("name")}, err)
		return
	}
	writeJSON(w, http.StatusOK, st.grantInfo(d))
}

func (s *Server) handlePolicyStatus(w http.ResponseWriter, r *http.Request, admin string) {
	writeJSON(w, http.StatusOK, s.PolicyStatus())
}

func (s *Server) handlePolicyReload(w http.ResponseWriter, r *http.Request, admin string) {
	if s.cfg.PolicyFile == "" {
		s.refuse(w, r, AuditEvent{Event: EventAdminDeny, Actor: "admin:" + admin}, errNoPolicyFile)
		return
	}
	st, err := s.ReloadPolicy("admin:" + admin)
	if err != nil {
		writeError(w, errPolicyInvalid(s.cfg.PolicyFile, err))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// handlePolicyExplain evaluates the running policy for a node: the one in
// the inventory, with what its token recorded, or a name not admitted yet;
// groups and addresses in the request stand in for a token still to come.
func (s *Server) handlePolicyExplain(w http.ResponseWriter, r *http.Request, admin string) {
	var req api.ExplainRequest
	deny := AuditEvent{Event: EventAdminDeny, Actor: "admin:" + admin}
	if e := decode(r, &req); e != nil {
		s.refuse(w, r, deny, e)
		return
	}
	if err := tokens.ValidNodeName(req.Node); err != nil {
		s.refuse(w, r, deny, &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Message: err.Error()})
		return
	}
	f := policy.Facts{Node: req.Node}
	n, err := s.adm.Node(r.Context(), req.Node)
	switch {
	case err == nil:
		f = facts(n)
	case !errors.Is(err, admission.ErrNotFound):
		s.refuse(w, r, deny, err)
		return
	}
	f.Groups = append(slices.Clone(f.Groups), req.Groups...)
	f.IPs = append(slices.Clone(f.IPs), req.IPs...)
	st := s.policy.Load()
	if req.Grant != "" && st.pol.Grant(req.Grant) == nil {
		s.refuse(w, r, deny, &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound, Message: fmt.Sprintf("no grant %q in the policy", req.Grant)})
		return
	}
	writeJSON(w, http.StatusOK, onlyGrant(st.explain(f), req.Grant))
}

// certNames lists every name a certificate carries, for the audit log.
func certNames(c *x509.Certificate) []string {
	names := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	for _, u := range c.URIs {
		names = append(names, u.String())
	}
	return names
}
