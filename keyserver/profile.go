package keyserver

import (
	"net/http"

	"github.com/keysystem/keysystem/keyserver/api"
	"net/http/pprof"
	runtimepprof "runtime/pprof"
)

// PathProfile serves Go's profiles to administrators when Config.Profiling
// is set: PathProfile + "profile?seconds=10" (CPU), "heap", "allocs",
// "goroutine", "mutex", "block", "trace?seconds=5". Profiles hold code
// locations and sizes, never the data in memory, but they are still the
// administrators' alone.
const PathProfile = "/v1/admin/debug/pprof/"

var errNoProfile = &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound, Message: "no such profile (profile, trace, heap, allocs, goroutine, mutex, block, threadcreate)"}

// handleProfile serves one named profile.
func (s *Server) handleProfile(w http.ResponseWriter, r *http.Request, admin string) {
	switch name := r.PathValue("name"); name {
	case "profile":
		pprof.Profile(w, r)
	case "trace":
		pprof.Trace(w, r)
	default:
		if runtimepprof.Lookup(name) == nil {
			s.refuse(w, r, AuditEvent{Event: EventAdminDeny, Actor: "admin:" + admin}, errNoProfile)
			return
		}
		pprof.Handler(name).ServeHTTP(w, r)
	}
}
