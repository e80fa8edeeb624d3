package acme

import (
	"errors"
	"fmt"
	"os"
	"strings"
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
		for k := range env {
			// lego's own switches (LEGO_DISABLE_CNAME_SUPPORT and the
			// like) are the keyserver's, for every account at once.
			if strings.HasPrefix(k, "LEGO_") {
				return nil, fmt.Errorf("dns provider %s: %s is lego's own setting, not a provider's", name, k)
			}
		}
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
		p, err := newByName(name)
		if err != nil {
			return nil, redact(err, env)
		}
		return p, nil
	}
}

// redact takes the account's setting values out of a provider's error,
// which goes into logs and the label's status: nothing promises that a
// provider never quotes one (a token, a password).
func redact(err error, env map[string]string) error {
	msg := err.Error()
	for k, v := range env {
		if len(v) >= 4 {
			msg = strings.ReplaceAll(msg, v, "<"+k+">")
		}
	}
	if msg == err.Error() {
		return err
	}
	return errors.New(msg)
}
