// Package keyfile writes key and certificate files so that a reader never
// sees a half-written file and a crash never leaves one behind: the data goes
// to a temporary file in the same directory, which is given its owner (when
// asked) and then its mode, synced, and renamed over the target; the
// directory is then synced so the rename itself survives a crash.
//
// The two halves are also offered apart, for a set of files that should
// change together: Stage prepares a file under a temporary name without
// touching the target, and Commit renames it into place. Stage every file
// of the set first, and only when all are staged commit them; a failure
// before then changes nothing a reader sees.
package keyfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Owner names the numeric owner and group a file is given; -1 leaves either
// as the process's own.
type Owner struct {
	UID, GID int
}

// NoOwner keeps the owner and group of the writing process.
var NoOwner = Owner{UID: -1, GID: -1}

// Write atomically replaces path with data, with mode perm.
func Write(path string, data []byte, perm os.FileMode) error {
	return WriteOwned(path, data, perm, NoOwner)
}

// WriteOwned is Write that also sets the file's owner and group before the
// file becomes visible under its name.
func WriteOwned(path string, data []byte, perm os.FileMode, owner Owner) error {
	s, err := Stage(path, data, perm, owner)
	if err != nil {
		return err
	}
	return s.Commit()
}

// Staged is a file written under a temporary name beside its target,
// complete (synced, with its owner and mode), waiting to be renamed over
// the target by Commit, or removed by Abort.
type Staged struct {
	path, tmp string
	done      bool // committed or aborted
}

// ErrDone is returned by Commit on a Staged already committed or aborted.
var ErrDone = errors.New("keyfile: already committed or aborted")

// Stage writes data to a new temporary file in path's directory, sets its
// owner (unless NoOwner) and then its mode, and syncs it; the target is
// not touched. The temporary file is created 0600 and the owner is set
// before the mode, so that the data is never readable by anyone but the
// writing process and, after the change of owner, the new owner (a mode
// such as 0640 never applies under the writer's own group). On error
// nothing is left behind.
func Stage(path string, data []byte, perm os.FileMode, owner Owner) (_ *Staged, err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("keyfile: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return nil, fmt.Errorf("keyfile: write %s: %w", path, err)
	}
	if owner != NoOwner {
		if err = f.Chown(owner.UID, owner.GID); err != nil {
			return nil, fmt.Errorf("keyfile: set owner of %s: %w", path, err)
		}
	}
	if err = f.Chmod(perm); err != nil {
		return nil, fmt.Errorf("keyfile: %w", err)
	}
	if err = f.Sync(); err != nil {
		return nil, fmt.Errorf("keyfile: sync %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return nil, fmt.Errorf("keyfile: close %s: %w", path, err)
	}
	return &Staged{path: path, tmp: tmp}, nil
}

// Path is the target the staged file replaces.
func (s *Staged) Path() string { return s.path }

// Commit renames the staged file over its target and syncs the directory.
// Should the rename fail, the temporary file is removed and the target
// left as it was.
func (s *Staged) Commit() error {
	if s.done {
		return ErrDone
	}
	s.done = true
	if err := os.Rename(s.tmp, s.path); err != nil {
		os.Remove(s.tmp)
		return fmt.Errorf("keyfile: %w", err)
	}
	dir := filepath.Dir(s.path)
	return syncDir(dir)
}

// CommitNew is Commit for a target that must not exist yet: of several
// writers creating one file at once, exactly one succeeds and the others
// get an error matching fs.ErrExist, the winner's file untouched.
func (s *Staged) CommitNew() error {
	if s.done {
		return ErrDone
	}
	s.done = true
	defer os.Remove(s.tmp)
	if err := os.Link(s.tmp, s.path); err != nil {
		return fmt.Errorf("keyfile: %w", err)
	}
	return syncDir(filepath.Dir(s.path))
}

// Abort removes the staged file; the target is not touched. Aborting a
// committed or aborted file does nothing.
func (s *Staged) Abort() {
	if s.done {
		return
	}
	s.done = true
	os.Remove(s.tmp)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("keyfile: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("keyfile: sync directory %s: %w", dir, err)
	}
	return nil
}
