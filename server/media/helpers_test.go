package media_test

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

// server is a test server with its media directory.
type server struct {
	*servertest.Server
	mediaDir string
	clock    *servertest.Clock
}

func newServer(t testing.TB, opts ...servertest.Option) *server {
	t.Helper()
	s := &server{mediaDir: t.TempDir(), clock: servertest.NewClock()}
	opts = append([]servertest.Option{servertest.WithConfig(func(c *app.Config) {
		c.MediaDir = s.mediaDir
		c.Now = s.clock.Now
		c.Media.MaxFileBytes = 4 << 20
		c.Media.MaxImageBytes = 2 << 20
		c.Media.UploadTTL = time.Minute
	})}, opts...)
	s.Server = servertest.New(t, opts...)
	return s
}

// files lists the files in the media directory.
func (s *server) files(t testing.TB) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(s.mediaDir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, strings.TrimPrefix(path, s.mediaDir))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// user is a signed-in test user with its clients.
type user struct {
	id     int32
	token  string
	srv    *server
	media  parleyv1connect.MediaServiceClient
	chats  parleyv1connect.ChatServiceClient
	msgs   parleyv1connect.MessageServiceClient
	avatar parleyv1connect.AvatarServiceClient
}

// newUser registers a user and returns it with clients of srv over p.
func newUser(t testing.TB, srv *server, p servertest.Protocol) *user {
	t.Helper()
	c := servertest.NewClients(srv.Server, p)
	acc := servertest.Register(t, c.Auth, servertest.UniqueName("uploader"))
	return &user{
		id:     acc.ID,
		token:  acc.Token,
		srv:    srv,
		media:  c.Media,
		chats:  c.Chat,
		msgs:   c.Message,
		avatar: c.Avatar,
	}
}

// req returns a request for msg signed by u.
func req[T any](u *user, msg *T) *connect.Request[T] { return servertest.WithToken(msg, u.token) }

// privateChat returns the id of the private chat between a and b.
func privateChat(t testing.TB, a, b *user) string {
	t.Helper()
	return servertest.PrivateChat(t, a.chats, a.token, b.id).GetId()
}

// createUpload starts an upload to a chat ("" for an avatar).
func (u *user) createUpload(t testing.TB, chatID, name, contentType string, size int) (*parleyv1.CreateUploadResponse, error) {
	t.Helper()
	r := &parleyv1.CreateUploadRequest{FileName: name, ContentType: contentType, Size: int64(size)}
	if chatID == "" {
		r.Target = &parleyv1.CreateUploadRequest_Avatar{Avatar: true}
	} else {
		r.Target = &parleyv1.CreateUploadRequest_ChatId{ChatId: chatID}
	}
	res, err := u.media.CreateUpload(context.Background(), req(u, r))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// put sends body to an upload URL with u's token and returns the status
// and the answer's body.
func (u *user) put(t testing.TB, url string, body io.Reader, size int64) (int, string) {
	t.Helper()
	r, err := http.NewRequest(http.MethodPut, u.srv.URL+url, body)
	if err != nil {
		t.Fatal(err)
	}
	r.ContentLength = size
	r.Header.Set("Authorization", "Bearer "+u.token)
	res, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatalf("PUT: %v", err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(out)
}

// upload uploads data to a chat ("" for an avatar) and returns the media.
func (u *user) upload(t testing.TB, chatID, name, contentType string, data []byte) *parleyv1.Media {
	t.Helper()
	up, err := u.createUpload(t, chatID, name, contentType, len(data))
	if err != nil {
		t.Fatalf("CreateUpload: %v", err)
	}
	if status, body := u.put(t, up.GetUploadUrl(), bytes.NewReader(data), int64(len(data))); status != http.StatusOK {
		t.Fatalf("PUT: %d %s", status, body)
	}
	return u.getMedia(t, up.GetMedia().GetId()).GetMedia()
}

func (u *user) getMedia(t testing.TB, id string) *parleyv1.GetMediaResponse {
	t.Helper()
	res, err := u.media.GetMedia(context.Background(), req(u, &parleyv1.GetMediaRequest{MediaId: id}))
	if err != nil {
		t.Fatalf("GetMedia: %v", err)
	}
	return res.Msg
}

// get fetches a path with u's token (none when u is nil) and headers.
func get(t testing.TB, srv *server, u *user, path string, header ...string) (*http.Response, []byte) {
	t.Helper()
	r, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if u != nil {
		r.Header.Set("Authorization", "Bearer "+u.token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	res, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, body
}

// pngImage encodes a w×h PNG with noisy pixels.
func pngImage(t testing.TB, w, h int) []byte {
	t.Helper()
	return servertest.PNG(t, w, h)
}

func mustEnv(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Skipf("%s is not set", name)
	}
	return v
}
