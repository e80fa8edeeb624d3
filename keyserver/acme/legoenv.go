package acme

import (
	"os"
	"sync"

	"github.com/go-acme/lego/v4/challenge"
)

// envMu: the process environment is one for all accounts, so providers
// are made one at a time.
var envMu sync.Mutex

// LegoByName adapts a lego constructor that reads its settings from the
// process environment, such as dns.NewDNSChallengeProviderByName, for
// SetDNSProvidersByName: an account's settings are put in the
// environment, under a lock, only while its provider is made, and the
// environment is then put back as it was. Two things follow, which the
// operator should know: while a provider is made, the whole process sees
// that account's settings (secrets included); and a variable the account
// does not set is taken from the keyserver's own environment, if there.
func LegoByName(newByName func(name string) (challenge.Provider, error)) func(name string, env map[string]string) (challenge.Provider, error) {
	return func(name string, env map[string]string) (challenge.Provider, error) {
		envMu.Lock()
		defer envMu.Unlock()
		type saved struct {
			value string
			set   bool
		}
		before := map[string]saved{}
		for k, v := range env {
			old, set := os.LookupEnv(k)
			before[k] = saved{old, set}
			os.Setenv(k, v)
		}
		defer func() {
			for k, s := range before {
				if s.set {
					os.Setenv(k, s.value)
				} else {
					os.Unsetenv(k)
				}
			}
		}()
		return newByName(name)
	}
}
