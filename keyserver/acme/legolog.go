package acme

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	legolog "github.com/go-acme/lego/v4/log"
)

// RouteLegoLog sends lego's log, which is one logger for the whole
// process, to l: its step-by-step "[INFO]" lines at debug level (the
// manager logs what an operator needs), its warnings as warnings.
func RouteLegoLog(l *slog.Logger) {
	legolog.Logger = legoLogger{l}
}

type legoLogger struct{ l *slog.Logger }

func (g legoLogger) log(msg string) {
	level := slog.LevelDebug
	if rest, ok := strings.CutPrefix(msg, "[WARN] "); ok {
		level, msg = slog.LevelWarn, rest
	} else {
		msg = strings.TrimPrefix(msg, "[INFO] ")
	}
	g.l.Log(context.Background(), level, "lego: "+strings.TrimSpace(msg))
}

func (g legoLogger) Print(args ...any)                 { g.log(fmt.Sprint(args...)) }
func (g legoLogger) Println(args ...any)               { g.log(fmt.Sprintln(args...)) }
func (g legoLogger) Printf(format string, args ...any) { g.log(fmt.Sprintf(format, args...)) }

// Fatal: only lego's command line calls it; in a library call it must
// not end the keyserver, so it is logged and the call panics instead.
func (g legoLogger) Fatal(args ...any) { g.fatal(fmt.Sprint(args...)) }
func (g legoLogger) Fatalln(args ...any) {
	g.fatal(fmt.Sprintln(args...))
}
func (g legoLogger) Fatalf(format string, args ...any) { g.fatal(fmt.Sprintf(format, args...)) }

func (g legoLogger) fatal(msg string) {
	g.l.Error("lego: " + strings.TrimSpace(msg))
	panic("lego: " + msg)
}
