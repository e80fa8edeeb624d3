package keyfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestWriteReplacesAtomicallyWithMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "node.key")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != "new" {
		t.Fatalf("content = %q, %v; want new", got, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the target (temporary file left behind?)", len(entries))
	}
}

// When the final rename fails (here: the target is a non-empty directory),
// the target is untouched and no temporary file is left behind.
func TestWriteFailureLeavesTargetAlone(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "node.key")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "keep"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Write(target, []byte("new"), 0o600); err == nil {
		t.Fatal("write over a non-empty directory succeeded")
	}
	if got, _ := os.ReadFile(filepath.Join(target, "keep")); string(got) != "old" {
		t.Errorf("target changed: %q", got)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the target (temporary file left behind?)", len(entries))
	}
}

// The owner is set before the mode: chown clears set-user-ID bits (Linux,
// for root too), so a set-user-ID bit in the mode survives only when the
// mode comes last; and a mode such as 0640 then never applies to the
// file while it still has the writer's own group.
func TestOwnerIsSetBeforeMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	path := filepath.Join(t.TempDir(), "node.key")
	perm := 0o640 | os.ModeSetuid
	if err := WriteOwned(path, []byte("key"), perm, Owner{UID: 65534, GID: 65533}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 65534 || st.Gid != 65533 {
		t.Errorf("owner %d:%d, want 65534:65533", st.Uid, st.Gid)
	}
	if got := fi.Mode() & (os.ModePerm | os.ModeSetuid); got != perm {
		t.Errorf("mode %v, want %v: the mode was set before the owner", got, perm)
	}
}

// Staged files leave their targets alone until committed; aborted ones
// leave nothing behind.
func TestStageCommitAbort(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sa, err := Stage(a, []byte("new a"), 0o600, NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := Stage(b, []byte("new b"), 0o600, NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	if sa.Path() != a {
		t.Errorf("Path() = %q", sa.Path())
	}
	for _, p := range []string{a, b} {
		if got, _ := os.ReadFile(p); string(got) != "old" {
			t.Fatalf("%s changed by Stage: %q", p, got)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 4 {
		t.Fatalf("%d entries, want the two targets and two staged files", len(entries))
	}
	sb.Abort()
	if err := sa.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(a); string(got) != "new a" {
		t.Errorf("a after commit: %q", got)
	}
	if fi, _ := os.Stat(a); fi.Mode().Perm() != 0o600 {
		t.Errorf("a has mode %v, want 0600", fi.Mode().Perm())
	}
	if got, _ := os.ReadFile(b); string(got) != "old" {
		t.Errorf("b after abort: %q", got)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("%d entries after commit and abort, want the two targets", len(entries))
	}
	if err := sb.Commit(); !errors.Is(err, ErrDone) {
		t.Errorf("commit after abort: %v, want ErrDone", err)
	}
	if err := sa.Commit(); !errors.Is(err, ErrDone) {
		t.Errorf("second commit: %v, want ErrDone", err)
	}
	sa.Abort() // no effect on a committed file
	if got, _ := os.ReadFile(a); string(got) != "new a" {
		t.Errorf("a after a late abort: %q", got)
	}
}

// A file that cannot be staged leaves nothing behind.
func TestStageFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	if _, err := Stage(filepath.Join(dir, "missing", "x"), []byte("x"), 0o600, NoOwner); err == nil {
		t.Fatal("staging into a missing directory succeeded")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("%d entries left behind", len(entries))
	}
}

// CommitNew creates the target or, when it exists, leaves it alone and
// says so; either way no temporary file is left.
func TestCommitNew(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	first, err := Stage(path, []byte("first"), 0o600, NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Stage(path, []byte("second"), 0o600, NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.CommitNew(); err != nil {
		t.Fatalf("CommitNew: %v", err)
	}
	if err := second.CommitNew(); !errors.Is(err, fs.ErrExist) {
		t.Errorf("CommitNew over an existing file = %v, want fs.ErrExist", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "first" {
		t.Errorf("target holds %q, want the first writer's", data)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files in the directory, want only the target", len(entries))
	}
	if err := first.CommitNew(); !errors.Is(err, ErrDone) {
		t.Errorf("second CommitNew = %v, want ErrDone", err)
	}
}
