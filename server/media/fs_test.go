package media_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/parley-chat/parley/server/media"
)

// FS.SweepTemp deletes the temporary files of uploads that stopped with
// their process (long unwritten), and leaves stored files and the
// temporary files of uploads under way.
func TestFS_SweepTemp(t *testing.T) {
	dir := t.TempDir()
	fs, err := media.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	const key = "6b1731132b29e449f73c7ca1"
	if err := fs.Put(context.Background(), key, bytes.NewReader([]byte("kept")), 4, "text/plain"); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, key[len(key)-2:])
	stopped, underWay := filepath.Join(sub, ".upload-stopped"), filepath.Join(sub, ".upload-under-way")
	for _, p := range []string{stopped, underWay} {
		if err := os.WriteFile(p, []byte("part"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stopped, long, long); err != nil {
		t.Fatal(err)
	}

	n, err := fs.SweepTemp(time.Now().Add(-time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("SweepTemp: %d, %v; want 1", n, err)
	}
	if _, err := os.Stat(stopped); !os.IsNotExist(err) {
		t.Errorf("the stopped upload's file: %v, want it gone", err)
	}
	if _, err := os.Stat(underWay); err != nil {
		t.Errorf("the file of the upload under way: %v", err)
	}
	obj, err := fs.Open(context.Background(), key)
	if err != nil {
		t.Fatalf("the stored file: %v", err)
	}
	obj.Close()
}
