package app

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gofrs/flock"
)

// LockFile is the file in the data directory that the server holding it
// keeps locked (and writes its process id into).
const LockFile = "parley.lock"

// ErrDataDirInUse is returned by Open when another server holds the data
// directory.
var ErrDataDirInUse = errors.New("data directory in use")

// usesDataDir reports whether cfg starts an embedded store, whose files
// (or, for the in-memory Redis, whose state) belong to one process only.
func (cfg Config) usesDataDir() bool {
	return cfg.DatabaseURL == "" || cfg.MongoURI == "" || cfg.RedisURL == ""
}

// lockDataDir takes the data directory for this process: two servers on
// one directory would each run their own embedded stores on the same
// files (and each its own in-memory Redis), and silently disagree about
// messages and sessions. The lock is the kernel's (flock), so it goes
// with the process however that ends.
func lockDataDir(dir string) (unlock func() error, err error) {
	if err := mkdirData(dir); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, LockFile)
	l := flock.New(path, flock.SetPermissions(0o600))
	ok, err := l.TryLock()
	if err != nil {
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	if !ok {
		holder := "another process"
		if b, err := os.ReadFile(path); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				holder = fmt.Sprintf("process %d", pid)
			}
		}
		return nil, fmt.Errorf("%w: %s is used by another Parley server (%s); stop it, or give this one its own -data-dir", ErrDataDirInUse, dir, holder)
	}
	// The holder's pid, for the message above; the lock itself is what
	// counts, so a stale pid from a crash is harmless.
	if err := os.WriteFile(path, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		l.Unlock()
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	return l.Unlock, nil
}
