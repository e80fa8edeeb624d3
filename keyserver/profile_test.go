package keyserver_test

import (
	"bytes"
	"net/http"
	"testing"

	"github.com/keysystem/keysystem/keyserver"
	"github.com/keysystem/keysystem/keyserver/api"
)

func TestProfiles(t *testing.T) {
	t.Parallel()
	h := start(t, options{profiling: true})
	resp, body := h.call(t, h.admin, http.MethodGet, keyserver.PathProfile+"heap", nil)
	// A heap profile is gzipped protobuf.
	if resp.StatusCode != http.StatusOK || !bytes.HasPrefix(body, []byte{0x1f, 0x8b}) {
		t.Errorf("heap profile: %d, %d bytes starting %x", resp.StatusCode, len(body), body[:min(len(body), 4)])
	}
	h.refused(t, h.anon, http.MethodGet, keyserver.PathProfile+"heap", nil, refusal{http.StatusUnauthorized, api.CodeCertRequired, keyserver.EventAuthDeny})
	h.refused(t, h.admin, http.MethodGet, keyserver.PathProfile+"nosuch", nil, refusal{http.StatusNotFound, api.CodeNotFound, keyserver.EventAdminDeny})

	off := start(t, options{})
	off.refused(t, off.admin, http.MethodGet, keyserver.PathProfile+"heap", nil, refusal{http.StatusNotFound, api.CodeNotFound, ""})
}
