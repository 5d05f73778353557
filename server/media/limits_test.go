package media_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

// refusal is an upload endpoint's answer.
type refusal struct {
	status int
	header http.Header
	code   string
	msg    string
}

// putWith sends body to an upload URL of srv with u's token over the
// client (HTTP/1.1 or h2c).
func putWith(t testing.TB, c *http.Client, srv *server, u *user, url string, body io.Reader, size int64) refusal {
	t.Helper()
	got, err := tryPut(c, srv, u, url, body, size)
	if err != nil {
		t.Fatalf("PUT: %v", err)
	}
	return got
}

// tryPut is putWith for other goroutines than the test's.
func tryPut(c *http.Client, srv *server, u *user, url string, body io.Reader, size int64) (refusal, error) {
	r, err := http.NewRequest(http.MethodPut, srv.URL+url, body)
	if err != nil {
		return refusal{}, err
	}
	r.ContentLength = size
	r.Header.Set("Authorization", "Bearer "+u.token)
	res, err := c.Do(r)
	if err != nil {
		return refusal{}, err
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	var e struct{ Code, Message string }
	_ = json.Unmarshal(out, &e)
	return refusal{status: res.StatusCode, header: res.Header, code: e.Code, msg: e.Message}, nil
}

// userOn is u with clients of another instance.
func userOn(srv *server, p servertest.Protocol, u *user) *user {
	c := servertest.NewClients(srv.Server, p)
	return &user{id: u.id, token: u.token, srv: srv, media: c.Media, chats: c.Chat, msgs: c.Message, avatar: c.Avatar}
}

// TestUploadLimits_Concurrent: a user may send at most
// MaxConcurrentUploads upload bodies at once over all instances; the one
// more is refused (429 with Retry-After) without using up its upload URL,
// which works once a slot is free.
func TestUploadLimits_Concurrent(t *testing.T) {
	four := servertest.WithConfig(func(c *app.Config) { c.Media.MaxConcurrentUploads = 4 })
	srvA, srvB := newServer(t, four), newServer(t, four)
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			ctx := context.Background()
			alice, bob := newUser(t, srvA, p), newUser(t, srvA, p)
			aliceB := userOn(srvB, p, alice)
			chatID := privateChat(t, alice, bob)
			const size = 1000
			type inFlight struct {
				pw   *io.PipeWriter
				done chan refusal
			}
			var open []inFlight
			for i := range 4 {
				u, srv := alice, srvA
				if i%2 == 1 {
					u, srv = aliceB, srvB
				}
				up, err := u.createUpload(t, chatID, "f.txt", "text/plain", size)
				if err != nil {
					t.Fatal(err)
				}
				pr, pw := io.Pipe()
				f := inFlight{pw: pw, done: make(chan refusal, 1)}
				go func() {
					// The last three end with a broken body.
					got, err := tryPut(p.HTTPClient, srv, u, up.GetUploadUrl(), pr, size)
					if err != nil {
						got.msg = err.Error()
					}
					f.done <- got
				}()
				// The server holds the slot once it reads the body.
				if _, err := pw.Write(bytes.Repeat([]byte("x"), 10)); err != nil {
					t.Fatal(err)
				}
				open = append(open, f)
			}
			fifth, err := alice.createUpload(t, chatID, "f.txt", "text/plain", size)
			if err != nil {
				t.Fatal(err)
			}
			// The servers take their slots before reading the bodies; wait
			// for all four (in the slots' Redis key) before the fifth.
			key := servertest.SharedStores(t).RedisPrefix + "media:receiving:" + strconv.Itoa(int(alice.id))
			for deadline := time.Now().Add(10 * time.Second); ; {
				n, err := srvA.App.Redis().ZCard(ctx, key).Result()
				if err != nil {
					t.Fatal(err)
				}
				if n == 4 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d upload slots held, want 4", n)
				}
				time.Sleep(10 * time.Millisecond)
			}
			got := putWith(t, p.HTTPClient, srvB, aliceB, fifth.GetUploadUrl(), strings.NewReader(strings.Repeat("y", size)), size)
			if got.status != http.StatusTooManyRequests || got.code != "resource_exhausted" || got.header.Get("Retry-After") == "" {
				t.Fatalf("fifth concurrent upload: %d %s %q Retry-After %q; want 429 resource_exhausted with Retry-After",
					got.status, got.code, got.msg, got.header.Get("Retry-After"))
			}
			if m := alice.getMedia(t, fifth.GetMedia().GetId()).GetMedia(); m.GetState() != parleyv1.MediaState_MEDIA_STATE_PENDING {
				t.Fatalf("refused upload's media is %v, want still pending", m.GetState())
			}
			// Another user's uploads are not held back.
			other, err := bob.createUpload(t, chatID, "b.txt", "text/plain", 3)
			if err != nil {
				t.Fatal(err)
			}
			if got := putWith(t, p.HTTPClient, srvA, bob, other.GetUploadUrl(), strings.NewReader("bob"), 3); got.status != http.StatusOK {
				t.Fatalf("bob's upload: %d %s", got.status, got.msg)
			}
			// One upload ends: its slot frees, and the refused upload URL
			// still works.
			open[0].pw.Write(bytes.Repeat([]byte("x"), size-10))
			open[0].pw.Close()
			if r := <-open[0].done; r.status != http.StatusOK {
				t.Fatalf("first upload: %d %s", r.status, r.msg)
			}
			if got := putWith(t, p.HTTPClient, srvA, alice, fifth.GetUploadUrl(), strings.NewReader(strings.Repeat("y", size)), size); got.status != http.StatusOK {
				t.Fatalf("fifth upload once a slot was free: %d %s %s", got.status, got.code, got.msg)
			}
			for _, f := range open[1:] {
				f.pw.CloseWithError(io.ErrUnexpectedEOF)
				<-f.done
			}
		})
	}
}

// TestUploadLimits_Unsent: the declared bytes of a user's uploads not yet
// sent are bounded, counted from CreateUpload on (so that concurrent
// uploads cannot overrun it together, on any instance); a refused
// CreateUpload creates nothing, and sending a file frees its bytes.
func TestUploadLimits_Unsent(t *testing.T) {
	const limit = 10_000
	small := servertest.WithConfig(func(c *app.Config) { c.Media.MaxUnsentBytes = limit })
	srvA, srvB := newServer(t, small), newServer(t, small)
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			ctx := context.Background()
			alice, bob := newUser(t, srvA, p), newUser(t, srvA, p)
			aliceB := userOn(srvB, p, alice)
			chatID := privateChat(t, alice, bob)

			data := bytes.Repeat([]byte("z"), 6000)
			sent := alice.upload(t, chatID, "a.txt", "text/plain", data) // ready, unsent: counts
			_, err := aliceB.createUpload(t, chatID, "b.txt", "text/plain", 4001)
			servertest.WantRetry(t, err)
			// The refusal created nothing: exactly what is left fits.
			if _, err := aliceB.createUpload(t, chatID, "b.txt", "text/plain", 4000); err != nil {
				t.Fatalf("upload that fits: %v", err)
			}
			_, err = alice.createUpload(t, chatID, "c.txt", "text/plain", 1)
			servertest.WantRetry(t, err)
			// Avatars count too; other users do not.
			_, err = alice.createUpload(t, "", "me.png", "image/png", 1)
			servertest.WantRetry(t, err)
			if _, err := bob.createUpload(t, chatID, "d.txt", "text/plain", limit); err != nil {
				t.Fatalf("bob's upload: %v", err)
			}
			// Sending a file frees its bytes.
			if _, err := alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
				ChatId: chatID, ClientMessageId: "m1", MediaIds: []string{sent.GetId()},
			})); err != nil {
				t.Fatalf("SendMessage: %v", err)
			}
			if _, err := alice.createUpload(t, chatID, "e.txt", "text/plain", 6000); err != nil {
				t.Fatalf("upload after sending: %v", err)
			}
			// An upload URL that expired no longer holds its bytes (the
			// upload URLs of these servers last a minute).
			srvA.clock.Advance(2 * time.Minute)
			srvB.clock.Advance(2 * time.Minute)
			if _, err := alice.createUpload(t, chatID, "f.txt", "text/plain", limit); err != nil {
				t.Fatalf("upload after the others expired: %v", err)
			}

			// Concurrent CreateUploads on both instances fit together.
			carol := newUser(t, srvA, p)
			carolB := userOn(srvB, p, carol)
			chat2 := privateChat(t, carol, bob)
			var wg sync.WaitGroup
			var mu sync.Mutex
			ok := 0
			for i := range 10 {
				u := carol
				if i%2 == 1 {
					u = carolB
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := u.media.CreateUpload(ctx, req(u, &parleyv1.CreateUploadRequest{
						FileName: "g.txt", ContentType: "text/plain", Size: 2000,
						Target: &parleyv1.CreateUploadRequest_ChatId{ChatId: chat2},
					}))
					mu.Lock()
					defer mu.Unlock()
					switch {
					case err == nil:
						ok++
					case connect.CodeOf(err) != connect.CodeResourceExhausted:
						t.Errorf("concurrent CreateUpload: %v", err)
					}
				}()
			}
			wg.Wait()
			if ok != limit/2000 {
				t.Errorf("%d concurrent uploads of 2000 bytes were created, want %d", ok, limit/2000)
			}
		})
	}
}

// TestUploadLimits_GroupAvatarIsUsed: a group's avatar counts as used, as
// a user's avatar and a sent file do, not against the unsent bytes.
func TestUploadLimits_GroupAvatarIsUsed(t *testing.T) {
	const limit = 10_000
	srv := newServer(t, servertest.WithConfig(func(c *app.Config) { c.Media.MaxUnsentBytes = limit }))
	p := servertest.Protocols[0]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	grp := servertest.GroupChat(t, alice.chats, alice.token, "g", bob.id).GetId()
	avatar := alice.upload(t, "", "g.png", "image/png", pngImage(t, 40, 40))
	if _, err := alice.createUpload(t, grp, "full.txt", "text/plain", limit); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("an upload over the limit with the image unused: %v, want RESOURCE_EXHAUSTED", err)
	}
	if _, err := alice.chats.UpdateChat(context.Background(), req(alice, &parleyv1.UpdateChatRequest{ChatId: grp, AvatarMediaId: avatar.GetId()})); err != nil {
		t.Fatalf("UpdateChat: %v", err)
	}
	if _, err := alice.createUpload(t, grp, "full.txt", "text/plain", limit); err != nil {
		t.Fatalf("an upload of the whole limit once the image is the group's avatar: %v", err)
	}
}

// TestUploadLimits_MinRate: an upload that keeps trickling (never idle
// long enough for the idle timeout) is ended by the rate floor with a
// clear error and leaves nothing; one that keeps up the rate for longer
// than the window is accepted.
func TestUploadLimits_MinRate(t *testing.T) {
	srv := newServer(t, servertest.WithConfig(func(c *app.Config) {
		c.Media.MinUploadRate = 1000
		c.Media.UploadRateWindow = 500 * time.Millisecond
		c.Media.BodyIdleTimeout = 30 * time.Second
	}))
	// trickle writes chunk bytes every tick until size or the server
	// stops reading.
	trickle := func(pw *io.PipeWriter, size, chunk int, tick time.Duration) {
		t := time.NewTicker(tick)
		defer t.Stop()
		for sent := 0; sent < size; sent += chunk {
			if _, err := pw.Write(bytes.Repeat([]byte("t"), chunk)); err != nil {
				return
			}
			<-t.C
		}
		pw.Close()
	}
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			alice, bob := newUser(t, srv, p), newUser(t, srv, p)
			chatID := privateChat(t, alice, bob)

			// 20 bytes a second, a byte every 50 ms.
			up, err := alice.createUpload(t, chatID, "slow.txt", "text/plain", 1000)
			if err != nil {
				t.Fatal(err)
			}
			pr, pw := io.Pipe()
			go trickle(pw, 1000, 1, 50*time.Millisecond)
			start := time.Now()
			got := putWith(t, p.HTTPClient, srv, alice, up.GetUploadUrl(), pr, 1000)
			pr.CloseWithError(io.ErrClosedPipe)
			if got.status != http.StatusRequestTimeout || got.code != "deadline_exceeded" || !strings.Contains(got.msg, "too slow") {
				t.Fatalf("trickling upload: %d %s %q; want 408 deadline_exceeded, too slow", got.status, got.code, got.msg)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("trickling upload ended after %s", d)
			}
			_, err = alice.media.GetMedia(context.Background(), req(alice, &parleyv1.GetMediaRequest{MediaId: up.GetMedia().GetId()}))
			servertest.WantCode(t, err, connect.CodeNotFound)
			if files := srv.files(t); len(files) != 0 {
				t.Errorf("files stored: %v", files)
			}

			// 4000 bytes a second for 1.5 s, three windows: accepted.
			up, err = alice.createUpload(t, chatID, "steady.txt", "text/plain", 6000)
			if err != nil {
				t.Fatal(err)
			}
			pr, pw = io.Pipe()
			go trickle(pw, 6000, 200, 50*time.Millisecond)
			if got := putWith(t, p.HTTPClient, srv, alice, up.GetUploadUrl(), pr, 6000); got.status != http.StatusOK {
				t.Fatalf("steady upload: %d %s %q", got.status, got.code, got.msg)
			}
			cleanFiles(t, alice, up.GetMedia().GetId())
		})
	}
}

// TestUploadRefusals_SVG: an SVG declared as an image is refused with the
// reason (it is not one of the image types, as it can carry scripts) and
// what to do instead, which works.
func TestUploadRefusals_SVG(t *testing.T) {
	srv := newServer(t)
	svg := []byte(`<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>`)
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			alice, bob := newUser(t, srv, p), newUser(t, srv, p)
			chatID := privateChat(t, alice, bob)
			for _, target := range []string{chatID, ""} {
				up, err := alice.createUpload(t, target, "logo.svg", "image/svg+xml", len(svg))
				if err != nil {
					t.Fatal(err)
				}
				got := putWith(t, p.HTTPClient, srv, alice, up.GetUploadUrl(), bytes.NewReader(svg), int64(len(svg)))
				if got.status != http.StatusBadRequest || !strings.Contains(got.msg, "SVG can carry scripts") ||
					strings.Contains(got.msg, "not the declared") {
					t.Errorf("SVG as an image (avatar: %v): %d %q", target == "", got.status, got.msg)
				}
				_, err = alice.media.GetMedia(context.Background(), req(alice, &parleyv1.GetMediaRequest{MediaId: up.GetMedia().GetId()}))
				servertest.WantCode(t, err, connect.CodeNotFound)
			}
			m := alice.upload(t, chatID, "logo.svg", "application/octet-stream", svg)
			if m.GetFileType() != "file" || m.GetContentType() != "image/svg+xml" {
				t.Errorf("SVG as a file: %s %s, want file image/svg+xml", m.GetFileType(), m.GetContentType())
			}
			cleanFiles(t, alice, m.GetId())
		})
	}
}

// TestGetMedia_OthersAvatar: another user sees of an avatar image what
// its picture shows: no file name, no hash, not in GetMedia nor in the
// download's headers. The uploader still sees everything.
func TestGetMedia_OthersAvatar(t *testing.T) {
	srv := newServer(t)
	data := pngImage(t, 40, 40)
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			alice, stranger := newUser(t, srv, p), newUser(t, srv, p)
			m := alice.upload(t, "", "holiday-in-paris.png", "image/png", data)
			if _, err := alice.avatar.AddAvatar(context.Background(), req(alice, &parleyv1.AddAvatarRequest{MediaId: m.GetId()})); err != nil {
				t.Fatalf("AddAvatar: %v", err)
			}
			own := alice.getMedia(t, m.GetId()).GetMedia()
			if own.GetFileName() != "holiday-in-paris.png" || own.GetSha256() == "" {
				t.Errorf("own avatar media = %v, want its name and hash", own)
			}
			seen := stranger.getMedia(t, m.GetId())
			if got := seen.GetMedia(); got.GetFileName() != "" || got.GetSha256() != "" || got.GetId() != m.GetId() ||
				got.GetState() != parleyv1.MediaState_MEDIA_STATE_READY || got.GetContentType() != "image/png" {
				t.Errorf("another user's view of the avatar = %v, want no name nor hash", got)
			}
			if seen.GetDownloadUrl() == "" {
				t.Errorf("no download URL for another user")
			}
			for _, url := range []string{m.GetUrl(), seen.GetDownloadUrl()} {
				who := stranger
				if strings.Contains(url, "signature=") {
					who = nil
				}
				res, body := get(t, srv, who, url)
				h := res.Header.Get("Content-Disposition") + " " + res.Header.Get("ETag")
				if res.StatusCode != http.StatusOK || !bytes.Equal(body, data) || strings.Contains(h, "holiday") || strings.Contains(h, own.GetSha256()) {
					t.Errorf("another user's download of %s: %d, headers %q", url, res.StatusCode, h)
				}
			}
			res, _ := get(t, srv, alice, m.GetUrl())
			if res.Header.Get("ETag") != strconv.Quote(own.GetSha256()) || !strings.Contains(res.Header.Get("Content-Disposition"), "holiday") {
				t.Errorf("own download headers: %v", res.Header)
			}
		})
	}
}
