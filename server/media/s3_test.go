package media_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

// startMinIO runs a MinIO server (the binary PARLEY_TEST_MINIO names,
// which `make test` installs) in a temp dir and returns a client and its
// endpoint.
func startMinIO(t *testing.T) (*minio.Client, string) {
	t.Helper()
	bin := os.Getenv("PARLEY_TEST_MINIO")
	if bin == "" {
		if bin, _ = exec.LookPath("minio"); bin == "" {
			t.Skip("no MinIO server: set PARLEY_TEST_MINIO (make test installs one)")
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	const key, secret = "parleytest", "parleytestsecret"
	cmd := exec.Command(bin, "server", t.TempDir(), "--address", addr, "--console-address", "127.0.0.1:0", "--quiet")
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+key, "MINIO_ROOT_PASSWORD="+secret, "MINIO_BROWSER=off")
	// MinIO writes its output while the test reads it.
	var out servertest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start minio: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	// Wait for its readiness endpoint, polling with backoff.
	ready := false
	for wait := 10 * time.Millisecond; !ready; wait = min(2*wait, time.Second) {
		select {
		case err := <-exited:
			t.Fatalf("minio exited: %v\n%s", err, out.String())
		case <-time.After(wait):
		}
		if res, err := http.Get("http://" + addr + "/minio/health/ready"); err == nil {
			res.Body.Close()
			ready = res.StatusCode == http.StatusOK
		}
		if wait == time.Second && out.Len() > 0 && strings.Contains(out.String(), "ERROR") {
			t.Fatalf("minio: %s", out.String())
		}
	}
	client, err := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(key, secret, "")})
	if err != nil {
		t.Fatal(err)
	}
	return client, fmt.Sprintf("http://%s:%s@%s", key, secret, addr)
}

// TestS3Storage runs uploads, downloads and deletion against a real
// S3-compatible server.
func TestS3Storage(t *testing.T) {
	client, endpoint := startMinIO(t)
	ctx := context.Background()
	if err := client.MakeBucket(ctx, "parley-media", minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("MakeBucket: %v", err)
	}
	objects := func() []string {
		var keys []string
		for o := range client.ListObjects(ctx, "parley-media", minio.ListObjectsOptions{Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			keys = append(keys, o.Key)
		}
		return keys
	}
	srv := newServer(t, servertest.WithConfig(func(c *app.Config) {
		c.MediaS3URL = endpoint + "/parley-media"
		c.Media.MaxFileBytes = 16 << 20
	}))
	p := servertest.Protocols[1]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	chatID := privateChat(t, alice, bob)

	// 12 MB: uploaded in three parts.
	data := bytes.Repeat([]byte("parley s3 "), 1_200_000)
	m := alice.upload(t, chatID, "big.txt", "text/plain", data)
	img := alice.upload(t, chatID, "p.png", "image/png", pngImage(t, 500, 400))
	if got := objects(); len(got) != 3 {
		t.Fatalf("objects = %v, want the file, the image and its thumbnail", got)
	}
	sent, err := alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
		ChatId: chatID, ClientMessageId: "s3", MediaIds: []string{m.GetId(), img.GetId()},
	}))
	if err != nil {
		t.Fatal(err)
	}
	res, body := get(t, srv, bob, m.GetUrl())
	if res.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("download: %d, %d bytes", res.StatusCode, len(body))
	}
	res, body = get(t, srv, bob, m.GetUrl(), "Range", "bytes=11000000-11000099")
	if res.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[11000000:11000100]) {
		t.Fatalf("range: %d, %q", res.StatusCode, body)
	}
	if res, _ := get(t, srv, bob, img.GetThumbnailUrl()); res.StatusCode != http.StatusOK {
		t.Fatalf("thumbnail: %d", res.StatusCode)
	}

	// A refused upload leaves no object.
	up, err := alice.createUpload(t, chatID, "long.txt", "text/plain", 100)
	if err != nil {
		t.Fatal(err)
	}
	if status, body := alice.put(t, up.GetUploadUrl(), strings.NewReader(strings.Repeat("x", 200)), -1); status != http.StatusRequestEntityTooLarge {
		t.Fatalf("long body: %d %s", status, body)
	}
	// Also when the declared size is a whole number of parts, so that
	// the part reader alone would stop right at it.
	up, err = alice.createUpload(t, chatID, "parts.txt", "text/plain", 10<<20)
	if err != nil {
		t.Fatal(err)
	}
	longer := io.LimitReader(zeros{}, 10<<20+10)
	if status, body := alice.put(t, up.GetUploadUrl(), longer, -1); status != http.StatusRequestEntityTooLarge {
		t.Fatalf("long body of whole parts: %d %s", status, body)
	}
	if got := objects(); len(got) != 3 {
		t.Fatalf("objects after refused uploads = %v", got)
	}

	if _, err := alice.msgs.DeleteMessage(ctx, req(alice, &parleyv1.DeleteMessageRequest{
		ChatId: chatID, MessageId: sent.Msg.GetMessage().GetId(),
	})); err != nil {
		t.Fatal(err)
	}
	if got := objects(); len(got) != 0 {
		t.Fatalf("objects after the message was deleted = %v", got)
	}
}
