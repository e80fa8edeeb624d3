package keyserver

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Audit event names.
const (
	EventTokenIssue   = "token.issue"
	EventTokenRevoke  = "token.revoke"
	EventTokenPrune   = "token.prune"
	EventAdmit        = "admit"
	EventAdmitReplay  = "admit.replay"
	EventAdmitDeny    = "admit.deny"
	EventRenew        = "renew"
	EventRenewDeny    = "renew.deny"
	EventAuthDeny     = "auth.deny" // a client certificate refused
	EventKeyTheft     = "key_theft" // a superseded CGC was used: its key may be in other hands
	EventNodeRevoke   = "node.revoke"
	EventAdminDeny    = "admin.deny"    // an administrator's request refused or failed
	EventSign         = "sign"          // a grant's certificate issued
	EventSignDeny     = "sign.deny"     // a grant's certificate refused
	EventStaticDeny   = "static.deny"   // a static file refused
	EventGrantDeny    = "grant.deny"    // a grant's description refused
	EventPolicyLoad   = "policy.load"   // a policy put in force (reason: its digest)
	EventPolicyReject = "policy.reject" // a policy file refused; the last good one stays
)

// AuditEvent is one line of the audit log. It never carries a secret: a
// token appears by its public id only.
type AuditEvent struct {
	Time    time.Time `json:"time"`
	Event   string    `json:"event"`
	Actor   string    `json:"actor,omitempty"` // "admin:<cn>" or "node:<name>", only when authenticated
	Node    string    `json:"node,omitempty"`  // a node known for certain: never a refused claim
	TokenID string    `json:"token_id,omitempty"`
	Grant   string    `json:"grant,omitempty"`
	Serial  string    `json:"serial,omitempty"`
	Remote  string    `json:"remote,omitempty"`
	Code    string    `json:"code,omitempty"`   // the error code the client was given
	Reason  string    `json:"reason,omitempty"` // the server's own account of a refusal
}

// auditLog appends events as JSON lines. Each event is one write(2) to a
// file opened O_APPEND, so lines from one process never interleave.
type auditLog struct {
	mu  sync.Mutex
	w   io.Writer
	now func() time.Time
}

// OpenAuditFile opens (creating 0600) an append-only audit file.
func OpenAuditFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keyserver: audit log: %w", err)
	}
	return f, nil
}

func (a *auditLog) record(e AuditEvent) error {
	if e.Time.IsZero() {
		e.Time = a.now().UTC()
	}
	line, err := json.Marshal(e)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	_, err = a.w.Write(append(line, '\n'))
	return err
}
