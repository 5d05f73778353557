package servertest

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"testing"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
)

// Upload uploads data to a chat as the user whose access token is token
// (CreateUpload, then the PUT) and returns the media, ready.
func Upload(tb testing.TB, s *Server, c parleyv1connect.MediaServiceClient, token, chatID, name, contentType string, data []byte) *parleyv1.Media {
	tb.Helper()
	return upload(tb, s, c, token, &parleyv1.CreateUploadRequest_ChatId{ChatId: chatID}, name, contentType, data)
}

// UploadAvatar uploads an avatar image as Upload does.
func UploadAvatar(tb testing.TB, s *Server, c parleyv1connect.MediaServiceClient, token, name, contentType string, data []byte) *parleyv1.Media {
	tb.Helper()
	return upload(tb, s, c, token, &parleyv1.CreateUploadRequest_Avatar{Avatar: true}, name, contentType, data)
}

func upload(tb testing.TB, s *Server, c parleyv1connect.MediaServiceClient, token string, target any, name, contentType string, data []byte) *parleyv1.Media {
	tb.Helper()
	cr := &parleyv1.CreateUploadRequest{FileName: name, ContentType: contentType, Size: int64(len(data))}
	switch t := target.(type) {
	case *parleyv1.CreateUploadRequest_ChatId:
		cr.Target = t
	case *parleyv1.CreateUploadRequest_Avatar:
		cr.Target = t
	}
	up, err := c.CreateUpload(context.Background(), WithToken(cr, token))
	if err != nil {
		tb.Fatalf("CreateUpload: %v", err)
	}
	r, err := http.NewRequest(http.MethodPut, s.URL+up.Msg.GetUploadUrl(), bytes.NewReader(data))
	if err != nil {
		tb.Fatal(err)
	}
	r.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(r)
	if err != nil {
		tb.Fatalf("PUT: %v", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(res.Body)
		tb.Fatalf("PUT: %d %s", res.StatusCode, body)
	}
	m, err := c.GetMedia(context.Background(), WithToken(&parleyv1.GetMediaRequest{MediaId: up.Msg.GetMedia().GetId()}, token))
	if err != nil {
		tb.Fatalf("GetMedia: %v", err)
	}
	return m.Msg.GetMedia()
}

// Download fetches a path of s, such as a file's URL, with the access
// token ("": none, for a signed URL), and returns the status and body.
func Download(tb testing.TB, s *Server, token, path string) (int, []byte) {
	tb.Helper()
	r, err := http.NewRequest(http.MethodGet, s.URL+path, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(r)
	if err != nil {
		tb.Fatalf("GET: %v", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return res.StatusCode, body
}

// PNG encodes a w×h PNG with noisy pixels, which compress little.
func PNG(tb testing.TB, w, h int) []byte {
	tb.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.NRGBA{uint8(x * 7), uint8(y * 13), uint8(x ^ y), 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}
