package keyserver

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/keysystem/keysystem/admission"
	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/policy"
	"github.com/keysystem/keysystem/tokens"
)

var errInternal = &api.Error{Status: http.StatusInternalServerError, Code: api.CodeInternal, Message: "internal error"}

// apiError maps an error from the packages below to what a client is told.
// Token problems all become one uniform answer, so a client cannot probe
// which tokens exist, have been used or belong to whom; the audit log keeps
// the real reason. Other messages describe only the client's own input
// (its CSR, its JSON) and never the server's state or internals.
func apiError(err error) *api.Error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	e := func(status int, code, msg string) *api.Error {
		return &api.Error{Status: status, Code: code, Message: msg}
	}
	switch {
	case errors.Is(err, tokens.ErrMalformed), errors.Is(err, tokens.ErrChecksum),
		errors.Is(err, tokens.ErrUnknown), errors.Is(err, tokens.ErrExpired),
		errors.Is(err, tokens.ErrUsed), errors.Is(err, tokens.ErrRevoked),
		errors.Is(err, tokens.ErrWrongNode), errors.Is(err, tokens.ErrWrongAddress):
		return e(http.StatusForbidden, api.CodeTokenInvalid, "invalid token")
	case errors.Is(err, admission.ErrCSRInvalid):
		return e(http.StatusBadRequest, api.CodeCSRInvalid, err.Error())
	case errors.Is(err, admission.ErrKeyRejected):
		return e(http.StatusBadRequest, api.CodeKeyRejected, err.Error())
	case errors.Is(err, admission.ErrInvalid):
		return e(http.StatusBadRequest, api.CodeBadRequest, err.Error())
	case errors.Is(err, admission.ErrCertExpired):
		return e(http.StatusUnauthorized, api.CodeCertExpired, "client certificate expired or not yet valid")
	case errors.Is(err, admission.ErrCertSuperseded):
		return e(http.StatusForbidden, api.CodeCertSuperseded, "client certificate superseded by a newer one")
	case errors.Is(err, admission.ErrNodeRevoked):
		return e(http.StatusForbidden, api.CodeNodeRevoked, "node revoked")
	case errors.Is(err, admission.ErrCertInvalid):
		return e(http.StatusForbidden, api.CodeCertInvalid, "client certificate not accepted for this endpoint")
	case errors.Is(err, admission.ErrNotFound):
		return e(http.StatusNotFound, api.CodeNotFound, err.Error())
	case errors.Is(err, policy.ErrUnknownGrant), errors.Is(err, policy.ErrNotGranted), errors.Is(err, policy.ErrWrongType):
		// One answer for "no such grant" and "not yours", so a node cannot
		// map the policy by asking; the wrong-type hint is for a grant the
		// node does have.
		msg := "no such grant for this node"
		if errors.Is(err, policy.ErrWrongType) {
			msg = strings.TrimPrefix(err.Error(), policy.ErrWrongType.Error()+": ")
		}
		return e(http.StatusForbidden, api.CodeGrantDenied, msg)
	case errors.Is(err, policy.ErrNameNotAllowed):
		return e(http.StatusForbidden, api.CodeNameNotAllowed, strings.TrimPrefix(err.Error(), policy.ErrNameNotAllowed.Error()+": "))
	case errors.Is(err, policy.ErrKeyTypeRejected):
		return e(http.StatusBadRequest, api.CodeKeyRejected, strings.TrimPrefix(err.Error(), policy.ErrKeyTypeRejected.Error()+": "))
	case errors.Is(err, authority.ErrWeakKey):
		return e(http.StatusBadRequest, api.CodeKeyRejected, err.Error())
	case errors.Is(err, policy.ErrRender):
		// What went wrong is about this node's own facts (and the node
		// sees it in its grant list too): tell it, so its operator can.
		return e(http.StatusInternalServerError, api.CodePolicyInvalid, "the policy cannot render this grant for this node: "+err.Error())
	}
	return errInternal
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", api.ContentJSON)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *api.Error) {
	writeJSON(w, e.Status, api.ErrorBody{Error: *e})
}
