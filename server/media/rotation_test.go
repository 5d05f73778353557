package media_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

// TestMedia_SigningKeyRotation checks that upload URLs and signed download
// URLs survive a rotation of the signing key, over instances that share
// their stores and media directory: what an instance signed with the old
// key works on an instance that signs with the new one and keeps the old
// to verify, and stops working only where the old key is gone.
func TestMedia_SigningKeyRotation(t *testing.T) {
	oldFile, _ := servertest.NewKeyFile(t)
	newFile, _ := servertest.NewKeyFile(t)
	before := newServer(t, servertest.WithConfig(func(c *app.Config) { c.JWTKeyFile = oldFile }))
	sameFiles := func(sign string, verify ...string) servertest.Option {
		return servertest.WithConfig(func(c *app.Config) {
			c.MediaDir, c.JWTKeyFile, c.JWTVerifyKeyFiles = before.mediaDir, sign, verify
		})
	}
	rotated := newServer(t, sameFiles(newFile, oldFile))
	after := newServer(t, sameFiles(newFile))

	alice := newUser(t, before, servertest.Protocols[0])
	data := pngImage(t, 64, 48)
	up, err := alice.createUpload(t, "", "face.png", "image/png", len(data))
	if err != nil {
		t.Fatalf("CreateUpload: %v", err)
	}
	// The upload URL from the old key's instance, sent to the rotated one
	// (alice's access token is the old key's too).
	onRotated := *alice
	onRotated.srv = rotated
	if status, body := onRotated.put(t, up.GetUploadUrl(), bytes.NewReader(data), int64(len(data))); status != http.StatusOK {
		t.Fatalf("PUT of an old key's upload URL to the rotated instance: %d %s", status, body)
	}

	oldURL := alice.getMedia(t, up.GetMedia().GetId()).GetDownloadUrl()
	rotatedAlice := newUserClients(t, rotated, alice)
	newURL := rotatedAlice.getMedia(t, up.GetMedia().GetId()).GetDownloadUrl()
	if oldURL == newURL || !strings.Contains(newURL, "key=") {
		t.Fatalf("download URLs %q (old key) and %q (new key): want each to name its key", oldURL, newURL)
	}
	for _, c := range []struct {
		name string
		srv  *server
		url  string
		want int
	}{
		{"old key's URL on the old key's instance", before, oldURL, http.StatusOK},
		{"old key's URL on the rotated instance", rotated, oldURL, http.StatusOK},
		{"new key's URL on the rotated instance", rotated, newURL, http.StatusOK},
		{"new key's URL once the old key is gone", after, newURL, http.StatusOK},
		{"old key's URL once the old key is gone", after, oldURL, http.StatusForbidden},
		{"new key's URL on an instance that never had the new key", before, newURL, http.StatusForbidden},
		{"old key's URL naming the new key", rotated, strings.Replace(oldURL, "key="+keyParam(t, oldURL), "key="+keyParam(t, newURL), 1), http.StatusForbidden},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, body := get(t, c.srv, nil, c.url)
			if res.StatusCode != c.want {
				t.Fatalf("GET = %d %s, want %d", res.StatusCode, body, c.want)
			}
			if c.want == http.StatusOK && !bytes.Equal(body, data) {
				t.Errorf("GET returned %d bytes, not the %d uploaded", len(body), len(data))
			}
		})
	}
}

// newUserClients returns u signed in with the same token on another
// instance.
func newUserClients(t testing.TB, srv *server, u *user) *user {
	t.Helper()
	c := servertest.NewClients(srv.Server, servertest.Protocols[1])
	return &user{id: u.id, token: u.token, srv: srv, media: c.Media, chats: c.Chat, msgs: c.Message, avatar: c.Avatar}
}

// keyParam returns the key a signed URL names.
func keyParam(t testing.TB, url string) string {
	t.Helper()
	_, q, _ := strings.Cut(url, "?")
	for _, kv := range strings.Split(q, "&") {
		if k, v, _ := strings.Cut(kv, "="); k == "key" {
			return v
		}
	}
	t.Fatalf("%q names no key", url)
	return ""
}
