package media_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"image/jpeg"
	"net/http"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

// TestSendImage: an image goes up, is sent in a message, and comes down
// to the other member whole, in ranges, as a thumbnail and by signed URL;
// a stranger gets nothing.
func TestSendImage(t *testing.T) {
	srv := newServer(t)
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			alice, bob, carol := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			chatID := privateChat(t, alice, bob)
			data := pngImage(t, 800, 600)
			m := alice.upload(t, chatID, "holiday.png", "image/png", data)
			sum := sha256.Sum256(data)
			if m.GetState() != parleyv1.MediaState_MEDIA_STATE_READY || m.GetSha256() != hex.EncodeToString(sum[:]) ||
				m.GetSize() != int64(len(data)) || m.GetWidth() != 800 || m.GetHeight() != 600 ||
				m.GetContentType() != "image/png" || m.GetFileType() != "image" || m.GetThumbnailUrl() == "" {
				t.Fatalf("uploaded media = %v", m)
			}
			// Before it is sent, only the uploader sees it.
			if _, err := bob.media.GetMedia(context.Background(), req(bob, &parleyv1.GetMediaRequest{MediaId: m.GetId()})); connect.CodeOf(err) != connect.CodeNotFound {
				t.Fatalf("bob's GetMedia before the send: %v", err)
			}
			if res, _ := get(t, srv, bob, m.GetUrl()); res.StatusCode != http.StatusNotFound {
				t.Fatalf("bob's download before the send: %d", res.StatusCode)
			}

			sent, err := alice.msgs.SendMessage(context.Background(), req(alice, &parleyv1.SendMessageRequest{
				ChatId: chatID, ClientMessageId: "pic-1", MediaIds: []string{m.GetId()},
			}))
			if err != nil {
				t.Fatalf("SendMessage: %v", err)
			}
			list, err := bob.msgs.ListMessages(context.Background(), req(bob, &parleyv1.ListMessagesRequest{ChatId: chatID}))
			if err != nil {
				t.Fatalf("ListMessages: %v", err)
			}
			atts := list.Msg.GetMessages()[0].GetAttachments()
			if len(atts) != 1 || atts[0].GetMediaId() != m.GetId() || atts[0].GetType() != "image" || atts[0].GetUrl() != m.GetUrl() ||
				atts[0].GetWidth() != 800 || atts[0].GetThumbnailUrl() != m.GetThumbnailUrl() {
				t.Fatalf("bob's attachments = %v", atts)
			}
			if got := bob.getMedia(t, m.GetId()).GetMedia().GetMessageId(); got != sent.Msg.GetMessage().GetId() {
				t.Fatalf("media's message_id = %q, want %q", got, sent.Msg.GetMessage().GetId())
			}

			res, body := get(t, srv, bob, m.GetUrl())
			if res.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
				t.Fatalf("bob's download: %d, %d bytes", res.StatusCode, len(body))
			}
			for h, want := range map[string]string{
				"Content-Type":           "image/png",
				"X-Content-Type-Options": "nosniff",
				"Content-Disposition":    "inline; filename=holiday.png",
				"Etag":                   `"` + m.GetSha256() + `"`,
			} {
				if got := res.Header.Get(h); got != want {
					t.Errorf("%s = %q, want %q", h, got, want)
				}
			}
			if res, _ := get(t, srv, bob, m.GetUrl(), "If-None-Match", res.Header.Get("Etag")); res.StatusCode != http.StatusNotModified {
				t.Errorf("If-None-Match: %d, want 304", res.StatusCode)
			}
			res, body = get(t, srv, bob, m.GetUrl(), "Range", "bytes=100-199")
			if res.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[100:200]) {
				t.Errorf("Range: %d, %d bytes", res.StatusCode, len(body))
			}
			if res, _ := get(t, srv, bob, m.GetUrl(), "Range", "bytes=99999999-"); res.StatusCode != http.StatusRequestedRangeNotSatisfiable {
				t.Errorf("Range out of bounds: %d, want 416", res.StatusCode)
			}

			res, body = get(t, srv, bob, m.GetThumbnailUrl())
			if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "image/jpeg" {
				t.Fatalf("thumbnail: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
			}
			cfg, err := jpeg.DecodeConfig(bytes.NewReader(body))
			if err != nil || cfg.Width != 320 || cfg.Height != 240 {
				t.Fatalf("thumbnail is %dx%d (%v), want 320x240", cfg.Width, cfg.Height, err)
			}

			// Signed URLs work with no token; altered or for another
			// file they do not.
			gm := bob.getMedia(t, m.GetId())
			if res, body := get(t, srv, nil, gm.GetDownloadUrl()); res.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
				t.Fatalf("signed download: %d", res.StatusCode)
			}
			if res, _ := get(t, srv, nil, gm.GetThumbnailDownloadUrl()); res.StatusCode != http.StatusOK {
				t.Fatalf("signed thumbnail: %d", res.StatusCode)
			}
			tampered := strings.Replace(gm.GetDownloadUrl(), "expires=", "expires=9", 1)
			if res, _ := get(t, srv, nil, tampered); res.StatusCode != http.StatusForbidden {
				t.Errorf("tampered signed URL: %d, want 403", res.StatusCode)
			}
			other := strings.Replace(gm.GetDownloadUrl(), m.GetId(), strings.Repeat("a", 24), 1)
			if res, _ := get(t, srv, nil, other); res.StatusCode != http.StatusForbidden {
				t.Errorf("signature of another file: %d, want 403", res.StatusCode)
			}
			if res, _ := get(t, srv, nil, m.GetUrl()); res.StatusCode != http.StatusUnauthorized {
				t.Errorf("no token, no signature: %d, want 401", res.StatusCode)
			}

			// A stranger learns nothing.
			if res, _ := get(t, srv, carol, m.GetUrl()); res.StatusCode != http.StatusNotFound {
				t.Errorf("carol's download: %d, want 404", res.StatusCode)
			}
			_, err = carol.media.GetMedia(context.Background(), req(carol, &parleyv1.GetMediaRequest{MediaId: m.GetId()}))
			servertest.WantCode(t, err, connect.CodeNotFound)

			// Deleting the message deletes the file.
			if _, err := alice.msgs.DeleteMessage(context.Background(), req(alice, &parleyv1.DeleteMessageRequest{
				ChatId: chatID, MessageId: sent.Msg.GetMessage().GetId(),
			})); err != nil {
				t.Fatalf("DeleteMessage: %v", err)
			}
			if res, _ := get(t, srv, nil, gm.GetDownloadUrl()); res.StatusCode != http.StatusNotFound {
				t.Errorf("download after the message was deleted: %d, want 404", res.StatusCode)
			}
			for _, f := range srv.files(t) {
				if strings.Contains(f, m.GetId()) {
					t.Errorf("file %s left after the message was deleted", f)
				}
			}
		})
	}
}

// TestSendFile: other files download as attachments that cannot run.
func TestSendFile(t *testing.T) {
	srv := newServer(t)
	p := servertest.Protocols[0]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	chatID := privateChat(t, alice, bob)
	for _, tc := range []struct {
		name, declared, body, want string
	}{
		{"notes.txt", "text/plain", "just some notes\n", "text/plain"},
		{"page.html", "text/html", "<!doctype html><html><script>alert(1)</script></html>", "text/html"},
		{"data.bin", "application/octet-stream", "<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>", "image/svg+xml"},
	} {
		m := alice.upload(t, chatID, tc.name, tc.declared, []byte(tc.body))
		if m.GetContentType() != tc.want || m.GetFileType() != "file" || m.GetThumbnailUrl() != "" {
			t.Fatalf("%s: media = %v", tc.name, m)
		}
		if _, err := alice.msgs.SendMessage(context.Background(), req(alice, &parleyv1.SendMessageRequest{
			ChatId: chatID, ClientMessageId: "f-" + tc.name, Text: "see attached", MediaIds: []string{m.GetId()},
		})); err != nil {
			t.Fatalf("SendMessage: %v", err)
		}
		res, body := get(t, srv, bob, m.GetUrl())
		if res.StatusCode != http.StatusOK || string(body) != tc.body {
			t.Fatalf("%s: download %d %q", tc.name, res.StatusCode, body)
		}
		if got := res.Header.Get("Content-Disposition"); got != "attachment; filename="+tc.name {
			t.Errorf("%s: Content-Disposition = %q", tc.name, got)
		}
		if res.Header.Get("X-Content-Type-Options") != "nosniff" || !strings.Contains(res.Header.Get("Content-Security-Policy"), "sandbox") {
			t.Errorf("%s: headers %v", tc.name, res.Header)
		}
	}
}

// TestAttachRules: only the sender's own ready uploads to that chat, and
// each in one message only.
func TestAttachRules(t *testing.T) {
	srv := newServer(t)
	p := servertest.Protocols[1]
	alice, bob, carol := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
	ab, ac := privateChat(t, alice, bob), privateChat(t, alice, carol)
	mine := alice.upload(t, ab, "a.txt", "text/plain", []byte("alice's"))
	bobs := bob.upload(t, ab, "b.txt", "text/plain", []byte("bob's"))
	otherChat := alice.upload(t, ac, "c.txt", "text/plain", []byte("other chat"))
	pending, err := alice.createUpload(t, ab, "p.txt", "text/plain", 10)
	if err != nil {
		t.Fatal(err)
	}
	send := func(key string, ids ...string) error {
		_, err := alice.msgs.SendMessage(context.Background(), req(alice, &parleyv1.SendMessageRequest{
			ChatId: ab, ClientMessageId: key, MediaIds: ids,
		}))
		return err
	}
	servertest.WantCode(t, send("x1", bobs.GetId()), connect.CodeNotFound)
	servertest.WantCode(t, send("x2", otherChat.GetId()), connect.CodeNotFound)
	servertest.WantCode(t, send("x3", strings.Repeat("b", 24)), connect.CodeNotFound)
	servertest.WantCode(t, send("x4", pending.GetMedia().GetId()), connect.CodeFailedPrecondition)
	// A refused send claims nothing: mine is still free for another.
	servertest.WantCode(t, send("x5", mine.GetId(), bobs.GetId()), connect.CodeNotFound)
	if err := send("ok", mine.GetId()); err != nil {
		t.Fatalf("send: %v", err)
	}
	// The retry of that send is the same message; another send is refused.
	if err := send("ok", mine.GetId()); err != nil {
		t.Fatalf("retried send: %v", err)
	}
	servertest.WantCode(t, send("again", mine.GetId()), connect.CodeFailedPrecondition)
	// A retry with other files gets the first message, and leaves the
	// other files free to send.
	other := alice.upload(t, ab, "o.txt", "text/plain", []byte("other"))
	if err := send("ok", other.GetId()); err != nil {
		t.Fatalf("retry with another file: %v", err)
	}
	if err := send("later", other.GetId()); err != nil {
		t.Fatalf("the other file after the retry: %v", err)
	}
	list, err := alice.msgs.ListMessages(context.Background(), req(alice, &parleyv1.ListMessagesRequest{ChatId: ab}))
	if err != nil {
		t.Fatal(err)
	}
	msgs := list.Msg.GetMessages()
	if len(msgs) != 2 || msgs[0].GetAttachments()[0].GetMediaId() != mine.GetId() || msgs[1].GetAttachments()[0].GetMediaId() != other.GetId() {
		t.Fatalf("messages = %v, want ok with a.txt, later with o.txt", msgs)
	}
	// Validation: neither text nor media, too many, duplicates.
	servertest.WantCode(t, send("empty"), connect.CodeInvalidArgument)
	servertest.WantCode(t, send("dup", mine.GetId(), mine.GetId()), connect.CodeInvalidArgument)
}

// TestAvatarUpload: an uploaded image becomes the active avatar, served
// to anyone signed in, and goes when the avatar is deleted.
func TestAvatarUpload(t *testing.T) {
	srv := newServer(t)
	p := servertest.Protocols[0]
	alice, stranger := newUser(t, srv, p), newUser(t, srv, p)
	data := pngImage(t, 300, 300)
	m := alice.upload(t, "", "me.png", "image/png", data)
	if !m.GetAvatar() || m.GetChatId() != "" {
		t.Fatalf("avatar media = %v", m)
	}
	// Until it is an avatar, the upload is its uploader's alone.
	if res, _ := get(t, srv, stranger, m.GetUrl()); res.StatusCode != http.StatusNotFound {
		t.Fatalf("stranger's download of an upload that is no avatar yet: %d, want 404", res.StatusCode)
	}
	_, err := stranger.media.GetMedia(context.Background(), req(stranger, &parleyv1.GetMediaRequest{MediaId: m.GetId()}))
	servertest.WantCode(t, err, connect.CodeNotFound)
	if res, body := get(t, srv, alice, m.GetUrl()); res.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("uploader's download of its upload: %d", res.StatusCode)
	}
	res, err := alice.avatar.AddAvatar(context.Background(), req(alice, &parleyv1.AddAvatarRequest{MediaId: m.GetId()}))
	if err != nil {
		t.Fatalf("AddAvatar: %v", err)
	}
	a := res.Msg.GetAvatar()
	if !a.GetIsActive() || a.GetIsRandom() || a.GetUrl() != m.GetUrl() {
		t.Fatalf("avatar = %v", a)
	}
	// Again (a retry): the same avatar.
	again, err := alice.avatar.AddAvatar(context.Background(), req(alice, &parleyv1.AddAvatarRequest{MediaId: m.GetId()}))
	if err != nil || again.Msg.GetAvatar().GetId() != a.GetId() {
		t.Fatalf("AddAvatar again: %v, %v; want avatar %d", again.Msg.GetAvatar(), err, a.GetId())
	}
	// The image of a user's avatar is no group's avatar.
	grp := servertest.GroupChat(t, alice.chats, alice.token, "g").GetId()
	_, err = alice.chats.UpdateChat(context.Background(), req(alice, &parleyv1.UpdateChatRequest{ChatId: grp, AvatarMediaId: m.GetId()}))
	servertest.WantCode(t, err, connect.CodeAlreadyExists)
	// A double click: two AddAvatar of one image at once make one avatar,
	// and both answer it.
	second := alice.upload(t, "", "me2.png", "image/png", data)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := alice.avatar.AddAvatar(context.Background(), req(alice, &parleyv1.AddAvatarRequest{MediaId: second.GetId()}))
			errs <- err
		}()
	}
	ok := 0
	for range 2 {
		if err := <-errs; err == nil {
			ok++
		} else {
			t.Errorf("concurrent AddAvatar: %v", err)
		}
	}
	mine, err := alice.avatar.ListAvatars(context.Background(), req(alice, &parleyv1.ListAvatarsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, av := range mine.Msg.GetAvatars() {
		if av.GetUrl() == second.GetUrl() {
			n++
		}
	}
	if ok != 2 || n != 1 {
		t.Fatalf("concurrent AddAvatar: %d succeeded, %d avatars of the image; want 2 and 1", ok, n)
	}
	// Back to the first image as the active avatar, for what follows;
	// adding the second again makes it active again, then the first.
	for _, m := range []*parleyv1.Media{m, second, m} {
		res, err := alice.avatar.AddAvatar(context.Background(), req(alice, &parleyv1.AddAvatarRequest{MediaId: m.GetId()}))
		if err != nil || !res.Msg.GetAvatar().GetIsActive() || res.Msg.GetAvatar().GetUrl() != m.GetUrl() {
			t.Fatalf("AddAvatar of %s, one of the user's avatars: %v, %v; want it active", m.GetId(), res.Msg.GetAvatar(), err)
		}
		mine, err := alice.avatar.ListAvatars(context.Background(), req(alice, &parleyv1.ListAvatarsRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		for _, av := range mine.Msg.GetAvatars() {
			if av.GetIsActive() != (av.GetUrl() == m.GetUrl()) {
				t.Errorf("after AddAvatar of %s: avatar %s active %v", m.GetId(), av.GetUrl(), av.GetIsActive())
			}
		}
	}
	_, err = stranger.avatar.AddAvatar(context.Background(), req(stranger, &parleyv1.AddAvatarRequest{MediaId: m.GetId()}))
	servertest.WantCode(t, err, connect.CodeNotFound)

	if res, body := get(t, srv, stranger, a.GetUrl()); res.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("stranger's download of the avatar: %d", res.StatusCode)
	}
	list, err := stranger.avatar.ListAvatars(context.Background(), req(stranger, &parleyv1.ListAvatarsRequest{UserId: alice.id}))
	if err != nil {
		t.Fatal(err)
	}
	active := slices.IndexFunc(list.Msg.GetAvatars(), func(av *parleyv1.Avatar) bool { return av.GetIsActive() })
	if active < 0 || list.Msg.GetAvatars()[active].GetId() != a.GetId() {
		t.Fatalf("ListAvatars: %v, want %d active", list.Msg.GetAvatars(), a.GetId())
	}
	// A chat file cannot be an avatar, nor an avatar image be sent.
	chatID := privateChat(t, alice, stranger)
	doc := alice.upload(t, chatID, "x.png", "image/png", data)
	_, err = alice.avatar.AddAvatar(context.Background(), req(alice, &parleyv1.AddAvatarRequest{MediaId: doc.GetId()}))
	servertest.WantCode(t, err, connect.CodeNotFound)
	_, err = alice.createUpload(t, "", "notes.txt", "text/plain", 10)
	servertest.WantCode(t, err, connect.CodeInvalidArgument)

	if _, err := alice.avatar.DeleteAvatar(context.Background(), req(alice, &parleyv1.DeleteAvatarRequest{AvatarId: a.GetId()})); err != nil {
		t.Fatalf("DeleteAvatar: %v", err)
	}
	if res, _ := get(t, srv, stranger, a.GetUrl()); res.StatusCode != http.StatusNotFound {
		t.Errorf("download of a deleted avatar: %d, want 404", res.StatusCode)
	}
	for _, f := range srv.files(t) {
		if strings.Contains(f, m.GetId()) {
			t.Errorf("file %s left after the avatar was deleted", f)
		}
	}
}
