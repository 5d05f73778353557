package user_test

import (
	"bytes"
	"image/png"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/parley-chat/parley/server/servertest"
)

// noRedirects is a plain HTTP client that reports redirects instead of
// following them.
var noRedirects = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// fetch GETs (or sends method to) the URL without a token and returns the
// response with its body read.
func fetch(t *testing.T, method, url string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := noRedirects.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, body
}

func TestIdenticon(t *testing.T) {
	srv := servertest.New(t)
	c := servertest.NewClients(srv, servertest.Protocols[0])
	acc := servertest.Register(t, c.Auth, servertest.UniqueName("Painter"))
	other := servertest.Register(t, c.Auth, servertest.UniqueName("Sculptor"))
	avatarURL := getMe(t, c, acc.Token).GetActiveAvatar().GetUrl()
	otherURL := getMe(t, c, other.Token).GetActiveAvatar().GetUrl()

	res, first := fetch(t, http.MethodGet, srv.URL+avatarURL, nil)
	t.Run("served", func(t *testing.T) {
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d (%s), want 200", avatarURL, res.StatusCode, first)
		}
		if got := res.Header.Get("Content-Type"); got != "image/png" {
			t.Errorf("Content-Type = %q, want image/png", got)
		}
		if got := res.Header.Get("Cache-Control"); !strings.Contains(got, "immutable") {
			t.Errorf("Cache-Control = %q, want immutable", got)
		}
		if res.Header.Get("ETag") == "" {
			t.Errorf("no ETag")
		}
		img, err := png.Decode(bytes.NewReader(first))
		if err != nil {
			t.Fatalf("decode PNG: %v", err)
		}
		if b := img.Bounds(); b.Dx() == 0 || b.Dx() != b.Dy() {
			t.Errorf("image bounds = %v, want a non-empty square", b)
		}
	})

	t.Run("same bytes twice", func(t *testing.T) {
		res, again := fetch(t, http.MethodGet, srv.URL+avatarURL, nil)
		if res.StatusCode != http.StatusOK || !bytes.Equal(again, first) {
			t.Errorf("second GET: status %d, %d bytes equal to the first: %v; want 200 and the same bytes",
				res.StatusCode, len(again), bytes.Equal(again, first))
		}
	})

	t.Run("another seed, another image", func(t *testing.T) {
		res, img := fetch(t, http.MethodGet, srv.URL+otherURL, nil)
		if res.StatusCode != http.StatusOK || bytes.Equal(img, first) {
			t.Errorf("GET %s: status %d, same bytes as %s: %v; want 200 and another image",
				otherURL, res.StatusCode, avatarURL, bytes.Equal(img, first))
		}
		if res.Header.Get("ETag") == "" || res.Header.Get("ETag") == resETag(t, srv.URL+avatarURL) {
			t.Errorf("ETag = %q for another seed, want another one", res.Header.Get("ETag"))
		}
	})

	t.Run("If-None-Match", func(t *testing.T) {
		etag := res.Header.Get("ETag")
		got, body := fetch(t, http.MethodGet, srv.URL+avatarURL, http.Header{"If-None-Match": {etag}})
		if got.StatusCode != http.StatusNotModified || len(body) != 0 {
			t.Errorf("GET with If-None-Match %s: status %d, %d bytes; want 304 and no body", etag, got.StatusCode, len(body))
		}
		got, body = fetch(t, http.MethodGet, srv.URL+avatarURL, http.Header{"If-None-Match": {`"someone-else"`}})
		if got.StatusCode != http.StatusOK || !bytes.Equal(body, first) {
			t.Errorf("GET with another ETag: status %d; want 200 and the image", got.StatusCode)
		}
	})

	t.Run("HEAD", func(t *testing.T) {
		got, body := fetch(t, http.MethodHead, srv.URL+avatarURL, nil)
		if got.StatusCode != http.StatusOK || len(body) != 0 || got.Header.Get("Content-Type") != "image/png" {
			t.Errorf("HEAD: status %d, Content-Type %q, %d bytes; want 200, image/png, no body",
				got.StatusCode, got.Header.Get("Content-Type"), len(body))
		}
	})

	t.Run("POST", func(t *testing.T) {
		got, _ := fetch(t, http.MethodPost, srv.URL+avatarURL, nil)
		if got.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST: status %d, want 405", got.StatusCode)
		}
	})

	seed := strings.TrimSuffix(strings.TrimPrefix(avatarURL, "/avatars/identicon/"), ".png")
	for _, path := range []string{
		"/avatars/identicon/zz.png",
		"/avatars/identicon/",
		"/avatars/identicon/.png",
		"/avatars/identicon/" + seed,
		"/avatars/identicon/" + seed + ".jpg",
		"/avatars/identicon/" + seed + "0.png",
		"/avatars/identicon/" + seed[1:] + ".png",
		"/avatars/identicon/" + strings.ToUpper(seed) + ".png",
		"/avatars/identicon/" + seed + ".png/x",
		"/avatars/identicon/sub/" + seed + ".png",
		"/avatars/identicon/%2e%2e%2f" + seed + ".png",
	} {
		t.Run("malformed "+path, func(t *testing.T) {
			got, body := fetch(t, http.MethodGet, srv.URL+path, nil)
			if got.StatusCode != http.StatusNotFound {
				t.Errorf("GET %s: status %d (%.40q), want 404", path, got.StatusCode, body)
			}
		})
	}

	// A path that walks out of the identicon directory is not served from
	// it: the server's mux sends the client to the clean path, where there
	// is no identicon either.
	t.Run("malformed /avatars/identicon/../x.png", func(t *testing.T) {
		path := "/avatars/identicon/../x.png"
		got, body := fetch(t, http.MethodGet, srv.URL+path, nil)
		if got.StatusCode == http.StatusNotFound {
			return
		}
		loc := got.Header.Get("Location")
		if got.StatusCode < 300 || got.StatusCode > 399 || loc == "" {
			t.Fatalf("GET %s: status %d (%.40q), want 404 or a redirect to the clean path", path, got.StatusCode, body)
		}
		if strings.HasPrefix(loc, "/avatars/identicon/") {
			t.Fatalf("GET %s: redirect to %q, want out of the identicon path", path, loc)
		}
		got, body = fetch(t, http.MethodGet, srv.URL+loc, nil)
		if got.StatusCode == http.StatusOK || got.Header.Get("Content-Type") == "image/png" {
			t.Errorf("GET %s after the redirect from %s: status %d, Content-Type %q (%.40q); want no image",
				loc, path, got.StatusCode, got.Header.Get("Content-Type"), body)
		}
	})
}

func resETag(t *testing.T, url string) string {
	t.Helper()
	res, _ := fetch(t, http.MethodGet, url, nil)
	return res.Header.Get("ETag")
}
