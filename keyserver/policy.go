package keyserver

import (
	"crypto/x509"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"time"

	"github.com/keysystem/keysystem/admission"
	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/policy"
)

// policyState is one loaded policy with everything needed to serve it:
// the named authorities it signs with and the static files' content, all
// read once at load. A reload builds a new state and swaps it in whole,
// so a request sees one policy from start to end.
type policyState struct {
	pol      *policy.Policy
	auths    map[string]*authority.Authority
	roots    map[string]*x509.Certificate // of auths; alone when explaining offline
	static   map[string]staticFile
	loadedAt time.Time
}

type staticFile struct {
	data   []byte
	digest string
}

// loadPolicy reads the policy file and the authorities it names. Nothing
// is changed: the caller decides whether to swap the result in.
func (s *Server) loadPolicy() (*policyState, error) {
	st := &policyState{auths: map[string]*authority.Authority{}, roots: map[string]*x509.Certificate{}, static: map[string]staticFile{}, loadedAt: s.cfg.Now()}
	if s.cfg.PolicyFile == "" {
		st.pol = policy.Empty()
		return st, nil
	}
	pol, err := policy.Load(s.cfg.PolicyFile)
	if err != nil {
		return nil, err
	}
	err = pol.CheckAuthorities(s.cfg.Now(), func(name string) (*x509.Certificate, error) {
		a, err := authority.Load(filepath.Join(s.cfg.AuthorityDir, name), name, authority.Options{Now: s.cfg.Now, Rand: s.cfg.Rand})
		if err != nil {
			return nil, fmt.Errorf("%w (create it with keyctl authority create %s)", err, name)
		}
		st.auths[name] = a
		st.roots[name] = a.Root()
		return a.Issuer(), nil
	})
	if err != nil {
		return nil, err
	}
	for _, name := range pol.GrantNames() {
		g := pol.Grant(name)
		if g.Type != policy.TypeStatic {
			continue
		}
		f := staticContent(g, st.roots)
		if len(f.data) > api.MaxStaticBytes {
			return nil, policy.Errors{pol.GrantProblem(name, fmt.Sprintf("%d bytes with its authorities' roots, over the limit of %d", len(f.data), api.MaxStaticBytes))}
		}
		st.static[name] = f
	}
	if err := s.checkACME(pol); err != nil {
		return nil, err
	}
	st.pol = pol
	return st, nil
}

// install makes st the policy in force.
func (s *Server) install(st *policyState) error {
	if s.cfg.PolicyFile != "" {
		err := s.adm.SetCGCLimits(admission.CGCLimits{Lifetime: st.pol.CGCLifetime(), RenewAfterExpiry: st.pol.RenewAfterExpiry()})
		if err != nil {
			return policy.Errors{{File: st.pol.File(), Msg: err.Error()}}
		}
	}
	s.policy.Store(st)
	return nil
}

var errNoPolicyFile = &api.Error{Status: http.StatusConflict, Code: api.CodeConflict, Message: "this keyserver runs without a policy file (policy: in keyserver.yaml)"}

// ReloadPolicy reads the policy file again and, if it is valid and every
// authority it names loads, serves it from now on. A file that is refused
// changes nothing: the keyserver goes on with the policy it had. The
// error then is a policy.Errors listing every problem.
//
// actor says who asked ("admin:<name>", "signal:SIGHUP"), for the audit
// log. Without a policy file there is nothing to reload: errNoPolicyFile.
func (s *Server) ReloadPolicy(actor string) (*api.PolicyStatus, error) {
	if s.cfg.PolicyFile == "" {
		return nil, errNoPolicyFile
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	st, err := s.loadPolicy()
	if err == nil {
		err = s.install(st)
	}
	if err != nil {
		old := s.policy.Load()
		s.record(AuditEvent{Event: EventPolicyReject, Actor: actor, Code: api.CodePolicyInvalid, Reason: fmt.Sprintf("%v; still serving %s", err, old.pol.Digest())})
		probs := policy.Problems(s.cfg.PolicyFile, err)
		s.log.Error("policy refused; still serving the last good one", "file", s.cfg.PolicyFile, "digest", old.pol.Digest(), "problems", len(probs))
		for _, p := range probs {
			s.log.Error("policy problem", "problem", p.String())
		}
		return nil, err
	}
	s.record(AuditEvent{Event: EventPolicyLoad, Actor: actor, Reason: st.pol.Digest()})
	s.log.Info("policy loaded", "file", s.cfg.PolicyFile, "digest", st.pol.Digest(), "grants", len(st.pol.GrantNames()))
	return policyStatus(s.cfg.PolicyFile, st), nil
}

// PolicyStatus describes the policy in force.
func (s *Server) PolicyStatus() *api.PolicyStatus {
	return policyStatus(s.cfg.PolicyFile, s.policy.Load())
}

func policyStatus(file string, st *policyState) *api.PolicyStatus {
	return &api.PolicyStatus{
		File:        file,
		Digest:      st.pol.Digest(),
		LoadedAt:    st.loadedAt,
		Authorities: orEmpty(st.pol.Authorities()),
		Groups:      orEmpty(st.pol.Groups()),
		Grants:      orEmpty(st.pol.GrantNames()),
	}
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// facts are what the policy knows of a node.
func facts(n admission.Node) policy.Facts {
	return policy.Facts{Node: n.Name, Groups: n.Groups, IPs: n.IPs}
}

// grantInfo describes a decision for the node it was made for.
func (st *policyState) grantInfo(d policy.Decision) api.GrantInfo {
	g := d.Grant
	gi := api.GrantInfo{Name: g.Name, Type: g.Type, Via: d.Via}
	if d.Err != nil {
		gi.Error = d.Err.Error()
	}
	if g.Type == policy.TypeStatic {
		f := st.static[g.Name]
		gi.Digest, gi.Size = f.digest, len(f.data)
		return gi
	}
	gi.Authority, gi.Usage, gi.KeyTypes, gi.Lifetime = g.Authority, string(g.Usage), g.KeyTypes, api.Duration(g.Lifetime)
	if r := st.roots[g.Authority]; r != nil {
		gi.RootPin = authority.SPKIPin(r)
	}
	c := d.Cert
	if c == nil {
		return gi
	}
	gi.CommonName = c.Subject.CommonName
	gi.Subject = c.Subject.String()
	gi.DNSNames = c.DNSNames
	for _, ip := range c.IPAddresses {
		gi.IPAddresses = append(gi.IPAddresses, ip.String())
	}
	for _, u := range c.URIs {
		gi.URIs = append(gi.URIs, u.String())
	}
	gi.AllowDNS = c.Allow.DNS
	for _, p := range c.Allow.IPs {
		gi.AllowIPs = append(gi.AllowIPs, p.String())
	}
	gi.AllowURIs = c.Allow.URIs
	return gi
}

// explain evaluates the whole policy for a node.
func (st *policyState) explain(f policy.Facts) api.GrantList {
	groups, granted, not := st.pol.Explain(f)
	out := api.GrantList{Node: f.Node, Groups: orEmpty(groups), Grants: []api.GrantInfo{}, NotGranted: not, Policy: st.pol.Digest()}
	for _, d := range granted {
		out.Grants = append(out.Grants, st.grantInfo(d))
	}
	return out
}

// errPolicyInvalid is a refused policy as a client sees it.
func errPolicyInvalid(file string, err error) *api.Error {
	probs := policy.Problems(file, err)
	return &api.Error{
		Status:  422,
		Code:    api.CodePolicyInvalid,
		Message: fmt.Sprintf("policy refused with %d problem(s); the keyserver goes on serving the last good policy", len(probs)),
		Details: probs.Lines(),
	}
}

// ExplainPolicy evaluates a policy file for a node without a keyserver,
// for checking a policy before it is deployed: as the keyserver would,
// with the authorities' root certificates given in roots (by name; a
// missing one leaves its pin out, and static content without its root).
// grant, when set, limits the answer to that grant.
func ExplainPolicy(p *policy.Policy, f policy.Facts, grant string, roots map[string]*x509.Certificate) api.GrantList {
	st := &policyState{pol: p, static: map[string]staticFile{}, roots: roots}
	for _, name := range p.GrantNames() {
		if g := p.Grant(name); g.Type == policy.TypeStatic {
			st.static[name] = staticContent(g, roots)
		}
	}
	return onlyGrant(st.explain(f), grant)
}

// staticContent is what a static grant serves: its file, then the root
// certificates of its authorities.
func staticContent(g *policy.Grant, roots map[string]*x509.Certificate) staticFile {
	data := slices.Clone(g.Content)
	for _, a := range g.Authorities {
		if r := roots[a]; r != nil {
			data = append(data, authority.EncodePEM(r)...)
		}
	}
	return staticFile{data: data, digest: api.Digest(data)}
}

// onlyGrant limits an explanation to one grant; "" keeps them all.
func onlyGrant(l api.GrantList, grant string) api.GrantList {
	if grant != "" {
		l.Grants = slices.DeleteFunc(l.Grants, func(g api.GrantInfo) bool { return g.Name != grant })
		l.NotGranted = slices.DeleteFunc(l.NotGranted, func(g string) bool { return g != grant })
	}
	return l
}
