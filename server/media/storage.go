package media

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrNoObject is returned by Storage.Open for a key that holds nothing.
var ErrNoObject = errors.New("no such object")

// Storage keeps the bytes of uploaded files under keys. Implementations
// must stream: neither Put nor Open may hold a whole file in memory.
type Storage interface {
	// Put stores exactly size bytes read from r under key, replacing
	// nothing: on any error (including r failing or ending early) no
	// object is left under key.
	Put(ctx context.Context, key string, r io.Reader, size int64, contentType string) error
	// Open returns the object under key, or ErrNoObject.
	Open(ctx context.Context, key string) (Object, error)
	// Delete removes the object under key; a missing object is no error.
	Delete(ctx context.Context, key string) error
}

// Object is a stored file being read. Seeking lets downloads serve byte
// ranges.
type Object interface {
	io.ReadSeekCloser
	Size() int64
	ModTime() time.Time
}

// FS stores files in a directory of the local filesystem. Instances that
// serve the same users must share the directory (or use S3).
type FS struct {
	dir string
}

// NewFS returns a Storage in dir, creating it when needed.
func NewFS(dir string) (*FS, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("media storage: %w", err)
	}
	return &FS{dir: dir}, nil
}

// path spreads the files over 256 subdirectories by the key's last two
// characters (an ObjectID's counter, which varies fastest).
func (f *FS) path(key string) (string, error) {
	if key == "" || strings.ContainsAny(key, `/\`) || key == "." || key == ".." {
		return "", fmt.Errorf("media storage: bad key %q", key)
	}
	sub := key
	if len(key) > 2 {
		sub = key[len(key)-2:]
	}
	return filepath.Join(f.dir, sub, key), nil
}

// Put writes to a temporary file beside the final one and renames it into
// place once complete and synced, so a crash never leaves a partial file
// under key.
func (f *FS) Put(ctx context.Context, key string, r io.Reader, size int64, _ string) (err error) {
	path, err := f.path(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("media storage: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("media storage: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	n, err := io.Copy(tmp, contextReader{ctx, r})
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("media storage: wrote %d bytes of %d", n, size)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("media storage: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("media storage: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("media storage: %w", err)
	}
	return nil
}

// tempPrefix names Put's temporary files.
const tempPrefix = ".upload-"

// SweepTemp deletes the temporary files that Puts stopped by their
// process's end (a crash, a kill) left behind: those last written before
// olderThan. It returns how many it deleted.
func (f *FS) SweepTemp(olderThan time.Time) (int, error) {
	subs, err := os.ReadDir(f.dir)
	if err != nil {
		return 0, fmt.Errorf("media storage: %w", err)
	}
	n := 0
	var errs []error
	for _, sub := range subs {
		if !sub.IsDir() {
			continue
		}
		dir := filepath.Join(f.dir, sub.Name())
		files, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, file := range files {
			if !strings.HasPrefix(file.Name(), tempPrefix) {
				continue
			}
			info, err := file.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // renamed or removed meanwhile
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if !info.ModTime().Before(olderThan) {
				continue
			}
			if err := os.Remove(filepath.Join(dir, file.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
				continue
			}
			n++
		}
	}
	if err := errors.Join(errs...); err != nil {
		return n, fmt.Errorf("media storage: %w", err)
	}
	return n, nil
}

// Open opens the file under key.
func (f *FS) Open(_ context.Context, key string) (Object, error) {
	path, err := f.path(key)
	if err != nil {
		return nil, err
	}
	file, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoObject
	}
	if err != nil {
		return nil, fmt.Errorf("media storage: %w", err)
	}
	info, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("media storage: %w", err)
	}
	return fsObject{file, info}, nil
}

// Delete removes the file under key.
func (f *FS) Delete(_ context.Context, key string) error {
	path, err := f.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("media storage: %w", err)
	}
	return nil
}

type fsObject struct {
	*os.File
	info fs.FileInfo
}

func (o fsObject) Size() int64        { return o.info.Size() }
func (o fsObject) ModTime() time.Time { return o.info.ModTime() }

// contextReader stops reading once ctx is done.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
