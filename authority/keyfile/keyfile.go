// Package keyfile writes key and certificate files so that a reader never
// sees a half-written file and a crash never leaves one behind: the data goes
// to a temporary file in the same directory, which is synced, given its mode
// (and owner, when asked), and renamed over the target; the directory is then
// synced so the rename itself survives a crash.
package keyfile

import (
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
func WriteOwned(path string, data []byte, perm os.FileMode, owner Owner) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("keyfile: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// The temporary file is created 0600, so a key is never readable by
	// others, not even for a moment; the final mode is set before rename.
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("keyfile: %w", err)
	}
	if owner != NoOwner {
		if err = f.Chown(owner.UID, owner.GID); err != nil {
			return fmt.Errorf("keyfile: set owner of %s: %w", path, err)
		}
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("keyfile: write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("keyfile: sync %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("keyfile: close %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("keyfile: %w", err)
	}
	return syncDir(dir)
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
