package chat_test

import (
	"bytes"
	"context"
	"errors"
	"image/jpeg"
	"net/http"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/media"
	"github.com/parley-chat/parley/server/servertest"
)

// TestForward_TextAndFiles: a message with text and an image, forwarded
// from one group to another by a member of both, reaches the other's
// members whole, marked with its origin, with a file they can download
// and whose original they cannot; forwarded again, it keeps the origin.
func TestForward_TextAndFiles(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			alice, bob, carol, dave := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			chatA := group(t, bob, "a", alice).GetId()
			chatB := group(t, alice, "b", carol).GetId()
			chatC := group(t, carol, "c", dave).GetId()
			data := servertest.PNG(t, 400, 300)
			pic := upload(t, srv, p, bob, chatA, "sea.png", "image/png", data)
			orig, err := bob.msgs.SendMessage(ctx, req(bob, &parleyv1.SendMessageRequest{
				ChatId: chatA, ClientMessageId: "orig", Text: "look at this", MediaIds: []string{pic.GetId()},
			}))
			if err != nil {
				t.Fatalf("SendMessage: %v", err)
			}
			o := orig.Msg.GetMessage()

			res, err := alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
				ChatId: chatB, ClientMessageId: "fwd", Forward: &parleyv1.ForwardSource{ChatId: chatA, MessageId: o.GetId()},
			}))
			if err != nil {
				t.Fatalf("forward: %v", err)
			}
			fwd := res.Msg.GetMessage()
			if fwd.GetSenderId() != alice.id {
				t.Errorf("forward's sender = %d, want the forwarder %d", fwd.GetSenderId(), alice.id)
			}
			wantOrigin(t, fwd, bob.id, o)

			listed := listAll(t, carol, chatB)
			if len(listed) != 1 {
				t.Fatalf("chat B holds %d messages, want 1", len(listed))
			}
			got := listed[0]
			wantOrigin(t, got, bob.id, o)
			if got.GetText() != "look at this" {
				t.Errorf("forward's text = %q, want the original's", got.GetText())
			}
			atts := got.GetAttachments()
			if len(atts) != 1 {
				t.Fatalf("forward's attachments = %v, want 1", atts)
			}
			a := atts[0]
			if a.GetMediaId() == pic.GetId() || a.GetUrl() != "/media/"+a.GetMediaId() || a.GetType() != "image" ||
				a.GetFileName() != "sea.png" || a.GetSize() != int64(len(data)) || a.GetWidth() != 400 || a.GetHeight() != 300 ||
				a.GetThumbnailUrl() != "/media/"+a.GetMediaId()+"/thumbnail" {
				t.Errorf("forward's attachment = %v, want a copy of %v", a, o.GetAttachments()[0])
			}
			if got := getChat(t, carol, chatB).GetLastMessage().GetPreview(); got != "look at this" {
				t.Errorf("chat B's preview = %q, want the forward's text", got)
			}
			// Its text is its origin's: the forwarder cannot put words
			// in bob's mouth.
			_, err = alice.msgs.EditMessage(ctx, req(alice, &parleyv1.EditMessageRequest{ChatId: chatB, MessageId: fwd.GetId(), Text: "bob owes alice"}))
			wantCode(t, err, connect.CodeFailedPrecondition)

			// Carol, in B but not in A, gets the copy, not the original.
			if status, body := download(t, srv, carol, a.GetUrl()); status != http.StatusOK || !bytes.Equal(body, data) {
				t.Errorf("carol's download of the copy: %d, %d bytes; want 200 and the image", status, len(body))
			}
			status, body := download(t, srv, carol, a.GetThumbnailUrl())
			if status != http.StatusOK {
				t.Fatalf("carol's thumbnail: %d", status)
			}
			if cfg, err := jpeg.DecodeConfig(bytes.NewReader(body)); err != nil || cfg.Width != 320 {
				t.Errorf("thumbnail: %v, %d wide; want a 320 wide JPEG", err, cfg.Width)
			}
			if status, _ := download(t, srv, carol, pic.GetUrl()); status != http.StatusNotFound {
				t.Errorf("carol's download of the original: %d, want 404", status)
			}
			cm := mediaClient(srv, p)
			gm, err := cm.GetMedia(ctx, req(carol, &parleyv1.GetMediaRequest{MediaId: a.GetMediaId()}))
			if err != nil {
				t.Fatalf("GetMedia: %v", err)
			}
			if m := gm.Msg.GetMedia(); m.GetState() != parleyv1.MediaState_MEDIA_STATE_READY || m.GetMessageId() != fwd.GetId() ||
				m.GetChatId() != chatB || m.GetUploaderId() != alice.id || m.GetSha256() != pic.GetSha256() {
				t.Errorf("the copy's media = %v", m)
			}
			if status, body := download(t, srv, nil, gm.Msg.GetDownloadUrl()); status != http.StatusOK || !bytes.Equal(body, data) {
				t.Errorf("signed download of the copy: %d, %d bytes", status, len(body))
			}

			// Forwarded again, by carol into C: still bob's, at its time.
			again, err := carol.msgs.SendMessage(ctx, req(carol, &parleyv1.SendMessageRequest{
				ChatId: chatC, ClientMessageId: "fwd2", Forward: &parleyv1.ForwardSource{ChatId: chatB, MessageId: fwd.GetId()},
			}))
			if err != nil {
				t.Fatalf("forward of the forward: %v", err)
			}
			wantOrigin(t, again.Msg.GetMessage(), bob.id, o)
			a2 := again.Msg.GetMessage().GetAttachments()
			if len(a2) != 1 || a2[0].GetMediaId() == a.GetMediaId() {
				t.Fatalf("second forward's attachments = %v, want a copy of its own", a2)
			}
			if status, body := download(t, srv, dave, a2[0].GetUrl()); status != http.StatusOK || !bytes.Equal(body, data) {
				t.Errorf("dave's download of the second copy: %d, %d bytes", status, len(body))
			}
			if status, _ := download(t, srv, dave, a.GetUrl()); status != http.StatusNotFound {
				t.Errorf("dave's download of B's copy: %d, want 404", status)
			}
		})
	}
}

// TestForward_Authorization: a forward names a message of a chat the
// caller is in, into a chat the caller may send to; refused, it stores
// nothing.
func TestForward_Authorization(t *testing.T) {
	servertest.SkipOnEmbeddedMongo(t) // the same checks on any store; minutes on FerretDB 1.x
	srv := servertest.New(t)
	ctx := context.Background()
	p := twoProtocols[0]
	alice, bob, removed, outsider := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
	chatA := group(t, alice, "a", bob, removed).GetId()
	target := group(t, alice, "target", bob, removed, outsider).GetId()
	other := group(t, bob, "other").GetId()
	pic := upload(t, srv, p, alice, chatA, "p.png", "image/png", servertest.PNG(t, 40, 30))
	res, err := alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
		ChatId: chatA, ClientMessageId: "src", Text: "secret", MediaIds: []string{pic.GetId()},
	}))
	if err != nil {
		t.Fatalf("SendMessage: %v", err)
	}
	src := res.Msg.GetMessage()
	gone := send(t, alice, chatA, "soon gone")
	if _, err := alice.msgs.DeleteMessage(ctx, req(alice, &parleyv1.DeleteMessageRequest{ChatId: chatA, MessageId: gone.GetId()})); err != nil {
		t.Fatalf("DeleteMessage: %v", err)
	}
	if _, err := alice.chats.RemoveParticipant(ctx, req(alice, &parleyv1.RemoveParticipantRequest{ChatId: chatA, UserId: removed.id})); err != nil {
		t.Fatalf("RemoveParticipant: %v", err)
	}
	inOther := send(t, bob, other, "elsewhere")

	fwd := func(chat, msg string) *parleyv1.ForwardSource {
		return &parleyv1.ForwardSource{ChatId: chat, MessageId: msg}
	}
	for _, c := range []struct {
		name string
		u    *user
		req  *parleyv1.SendMessageRequest
		want connect.Code
	}{
		{"source chat of others", outsider, &parleyv1.SendMessageRequest{ChatId: target, Forward: fwd(chatA, src.GetId())}, connect.CodeNotFound},
		{"removed from the source chat", removed, &parleyv1.SendMessageRequest{ChatId: target, Forward: fwd(chatA, src.GetId())}, connect.CodeNotFound},
		{"target chat of others", alice, &parleyv1.SendMessageRequest{ChatId: other, Forward: fwd(chatA, src.GetId())}, connect.CodeNotFound},
		{"message of another chat", bob, &parleyv1.SendMessageRequest{ChatId: target, Forward: fwd(chatA, inOther.GetId())}, connect.CodeNotFound},
		{"no such message", bob, &parleyv1.SendMessageRequest{ChatId: target, Forward: fwd(chatA, bson.NewObjectID().Hex())}, connect.CodeNotFound},
		{"no such chat", bob, &parleyv1.SendMessageRequest{ChatId: target, Forward: fwd(bson.NewObjectID().Hex(), src.GetId())}, connect.CodeNotFound},
		{"deleted source", bob, &parleyv1.SendMessageRequest{ChatId: target, Forward: fwd(chatA, gone.GetId())}, connect.CodeFailedPrecondition},
		{"with text", bob, &parleyv1.SendMessageRequest{ChatId: target, Text: "mine too", Forward: fwd(chatA, src.GetId())}, connect.CodeInvalidArgument},
		{"with media", alice, &parleyv1.SendMessageRequest{ChatId: target, MediaIds: []string{pic.GetId()}, Forward: fwd(chatA, src.GetId())}, connect.CodeInvalidArgument},
		{"bad message id", bob, &parleyv1.SendMessageRequest{ChatId: target, Forward: fwd(chatA, "nope")}, connect.CodeInvalidArgument},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.req.ClientMessageId = "refused"
			_, err := c.u.msgs.SendMessage(ctx, req(c.u, c.req))
			wantCode(t, err, c.want)
		})
	}
	if msgs := listAll(t, alice, target); len(msgs) != 0 {
		t.Errorf("target chat holds %v after refusals, want nothing", msgs)
	}
	if n := mediaOfChat(t, srv, target); n != 0 {
		t.Errorf("target chat has %d media after refusals, want none", n)
	}
	// The same forward by a member goes through.
	if _, err := bob.msgs.SendMessage(ctx, req(bob, &parleyv1.SendMessageRequest{
		ChatId: target, ClientMessageId: "ok", Forward: fwd(chatA, src.GetId()),
	})); err != nil {
		t.Fatalf("bob's forward: %v", err)
	}
}

// TestForward_Idempotent sends one forward five times at once with one
// client_message_id: one message, one copy of each file.
func TestForward_Idempotent(t *testing.T) {
	servertest.SkipOnEmbeddedMongo(t) // minutes on FerretDB 1.x
	srv := servertest.New(t)
	ctx := context.Background()
	p := twoProtocols[1]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	chatA := group(t, alice, "a").GetId()
	chatB := group(t, alice, "b", bob).GetId()
	pic := upload(t, srv, p, alice, chatA, "p.png", "image/png", servertest.PNG(t, 40, 30))
	doc := upload(t, srv, p, alice, chatA, "notes.txt", "text/plain", []byte("some notes"))
	res, err := alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
		ChatId: chatA, ClientMessageId: "src", MediaIds: []string{pic.GetId(), doc.GetId()},
	}))
	if err != nil {
		t.Fatalf("SendMessage: %v", err)
	}
	src := res.Msg.GetMessage()

	const attempts = 5
	ids := make([]string, attempts)
	var wg sync.WaitGroup
	for i := range attempts {
		wg.Go(func() {
			res, err := alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
				ChatId: chatB, ClientMessageId: "once", Forward: &parleyv1.ForwardSource{ChatId: chatA, MessageId: src.GetId()},
			}))
			if err != nil {
				t.Errorf("attempt %d: %v", i, err)
				return
			}
			if n := len(res.Msg.GetMessage().GetAttachments()); n != 2 {
				t.Errorf("attempt %d: %d attachments, want 2", i, n)
			}
			ids[i] = res.Msg.GetMessage().GetId()
		})
	}
	wg.Wait()
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatalf("attempts answered messages %v, want one", ids)
		}
	}
	msgs := listAll(t, bob, chatB)
	if len(msgs) != 1 {
		t.Fatalf("chat B holds %d messages, want 1", len(msgs))
	}
	if n := mediaOfChat(t, srv, chatB); n != 2 {
		t.Errorf("chat B has %d media, want one copy of each of the 2 files", n)
	}
	for _, a := range msgs[0].GetAttachments() {
		if status, _ := download(t, srv, bob, a.GetUrl()); status != http.StatusOK {
			t.Errorf("bob's download of %s: %d", a.GetFileName(), status)
		}
	}
}

// TestForward_DeleteKeepsSharedFile: the stored file of a forwarded
// message goes with the last message that has it, whichever is deleted
// first.
func TestForward_DeleteKeepsSharedFile(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	p := twoProtocols[0]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	chatA := group(t, alice, "a").GetId()
	chatB := group(t, alice, "b", bob).GetId()
	for _, originalFirst := range []bool{true, false} {
		name := map[bool]string{true: "original deleted first", false: "forward deleted first"}[originalFirst]
		t.Run(name, func(t *testing.T) {
			data := servertest.PNG(t, 64, 48)
			pic := upload(t, srv, p, alice, chatA, "p.png", "image/png", data)
			res, err := alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
				ChatId: chatA, ClientMessageId: servertest.UniqueName("src"), MediaIds: []string{pic.GetId()},
			}))
			if err != nil {
				t.Fatalf("SendMessage: %v", err)
			}
			orig := res.Msg.GetMessage()
			res, err = alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
				ChatId: chatB, ClientMessageId: servertest.UniqueName("fwd"), Forward: &parleyv1.ForwardSource{ChatId: chatA, MessageId: orig.GetId()},
			}))
			if err != nil {
				t.Fatalf("forward: %v", err)
			}
			fwd := res.Msg.GetMessage()
			first, second := orig, fwd
			firstURL, secondURL := orig.GetAttachments()[0].GetUrl(), fwd.GetAttachments()[0].GetUrl()
			if !originalFirst {
				first, second = second, first
				firstURL, secondURL = secondURL, firstURL
			}

			if _, err := alice.msgs.DeleteMessage(ctx, req(alice, &parleyv1.DeleteMessageRequest{ChatId: first.GetChatId(), MessageId: first.GetId()})); err != nil {
				t.Fatalf("DeleteMessage: %v", err)
			}
			if status, _ := download(t, srv, alice, firstURL); status != http.StatusNotFound {
				t.Errorf("download of the deleted message's file: %d, want 404", status)
			}
			if status, body := download(t, srv, alice, secondURL); status != http.StatusOK || !bytes.Equal(body, data) {
				t.Errorf("download of the other message's file: %d, %d bytes; want it whole", status, len(body))
			}
			if status, _ := download(t, srv, alice, secondURL+"/thumbnail"); status != http.StatusOK {
				t.Errorf("thumbnail of the other message's file: %d", status)
			}
			if !stored(t, srv, pic.GetId()) || !stored(t, srv, pic.GetId()+".thumb") {
				t.Fatalf("the shared file was removed with the first message")
			}

			if _, err := alice.msgs.DeleteMessage(ctx, req(alice, &parleyv1.DeleteMessageRequest{ChatId: second.GetChatId(), MessageId: second.GetId()})); err != nil {
				t.Fatalf("DeleteMessage: %v", err)
			}
			if stored(t, srv, pic.GetId()) || stored(t, srv, pic.GetId()+".thumb") {
				t.Errorf("the shared file is still stored after both messages were deleted")
			}
			if n := mediaOfChat(t, srv, chatA) + mediaOfChat(t, srv, chatB); n != 0 {
				t.Errorf("%d media documents left after both messages were deleted", n)
			}
		})
	}
}

// wantOrigin fails unless m is marked as forwarded from orig, sent by
// sender.
func wantOrigin(t *testing.T, m *parleyv1.Message, sender int32, orig *parleyv1.Message) {
	t.Helper()
	f := m.GetForwardedFrom()
	if f.GetSenderId() != sender || !f.GetSentAt().AsTime().Equal(orig.GetSentAt().AsTime()) {
		t.Errorf("forwarded_from = %v, want sender %d at %v", f, sender, orig.GetSentAt().AsTime())
	}
}

func mediaClient(srv *servertest.Server, p servertest.Protocol) parleyv1connect.MediaServiceClient {
	return servertest.Client(srv, p, parleyv1connect.NewMediaServiceClient)
}

// upload uploads data to a chat as u and returns the ready media.
func upload(t *testing.T, srv *servertest.Server, p servertest.Protocol, u *user, chatID, name, contentType string, data []byte) *parleyv1.Media {
	t.Helper()
	return servertest.Upload(t, srv, mediaClient(srv, p), u.token, chatID, name, contentType, data)
}

// download fetches a path of the server as u (nil: with no token, for a
// signed URL) and returns the status and body.
func download(t *testing.T, srv *servertest.Server, u *user, path string) (int, []byte) {
	t.Helper()
	token := ""
	if u != nil {
		token = u.token
	}
	return servertest.Download(t, srv, token, path)
}

// stored reports whether the server's storage holds an object under key
// (an upload's id for its bytes, with ".thumb" for its thumbnail).
func stored(t *testing.T, srv *servertest.Server, key string) bool {
	t.Helper()
	obj, err := srv.App.MediaStorage().Open(context.Background(), key)
	if errors.Is(err, media.ErrNoObject) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	obj.Close()
	return true
}

// mediaOfChat counts the media documents of a chat.
func mediaOfChat(t *testing.T, srv *servertest.Server, chatID string) int64 {
	t.Helper()
	id, err := bson.ObjectIDFromHex(chatID)
	if err != nil {
		t.Fatal(err)
	}
	n, err := srv.App.Mongo().Collection("media").CountDocuments(context.Background(), bson.D{{Key: "chatId", Value: id}})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
