package media_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/media"
	"github.com/parley-chat/parley/server/servertest"
)

// TestCleanup: uploads never sent are deleted with their files after the
// delay, by janitors running at once on two instances; sent ones stay,
// and one whose message was stored but not recorded is repaired, not
// deleted.
func TestCleanup(t *testing.T) {
	srv := newServer(t, servertest.WithOwnMongoDatabase(t))
	p := servertest.Protocols[0]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	chatID := privateChat(t, alice, bob)
	coll := srv.App.Mongo().Collection("media")

	unsent := alice.upload(t, chatID, "unsent.txt", "text/plain", []byte("never sent"))
	pending, err := alice.createUpload(t, chatID, "pending.txt", "text/plain", 10)
	if err != nil {
		t.Fatal(err)
	}
	avatar := alice.upload(t, "", "a.png", "image/png", pngImage(t, 40, 40))
	sent := alice.upload(t, chatID, "sent.png", "image/png", pngImage(t, 40, 40))
	if _, err := alice.msgs.SendMessage(context.Background(), req(alice, &parleyv1.SendMessageRequest{
		ChatId: chatID, ClientMessageId: "sent", MediaIds: []string{sent.GetId()},
	})); err != nil {
		t.Fatal(err)
	}
	// A send that stopped between storing its message and recording it on
	// the media: the media keeps only its claim.
	torn := alice.upload(t, chatID, "torn.txt", "text/plain", []byte("torn send"))
	if _, err := alice.msgs.SendMessage(context.Background(), req(alice, &parleyv1.SendMessageRequest{
		ChatId: chatID, ClientMessageId: "torn", MediaIds: []string{torn.GetId()},
	})); err != nil {
		t.Fatal(err)
	}
	tornID, _ := bson.ObjectIDFromHex(torn.GetId())
	if _, err := coll.UpdateOne(context.Background(), bson.D{{Key: "_id", Value: tornID}}, bson.D{
		{Key: "$unset", Value: bson.D{{Key: "messageId", Value: ""}}},
		{Key: "$set", Value: bson.D{{Key: "loose", Value: true}}},
	}); err != nil {
		t.Fatal(err)
	}
	// A claim whose send never stored its message.
	lost := alice.upload(t, chatID, "lost.txt", "text/plain", []byte("lost send"))
	lostID, _ := bson.ObjectIDFromHex(lost.GetId())
	if _, err := coll.UpdateOne(context.Background(), bson.D{{Key: "_id", Value: lostID}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "claim", Value: "message:lost"}, {Key: "claimedAt", Value: srv.clock.Now()}}}}); err != nil {
		t.Fatal(err)
	}

	// Not yet due: nothing goes.
	if n, err := srv.App.NewMediaJanitor(24 * time.Hour).Sweep(context.Background()); err != nil || n != 0 {
		t.Fatalf("early sweep: %d, %v", n, err)
	}

	srv.clock.Advance(25 * time.Hour)
	var wg sync.WaitGroup
	// Two instances' janitors (each is what one instance runs) at once.
	counts := make([]int, 2)
	for i := range counts {
		wg.Go(func() {
			n, err := srv.App.NewMediaJanitor(24 * time.Hour).Sweep(context.Background())
			if err != nil {
				t.Errorf("sweep %d: %v", i, err)
			}
			counts[i] = n
		})
	}
	wg.Wait()
	if got := counts[0] + counts[1]; got != 4 {
		t.Errorf("janitors deleted %d uploads (%v), want 4: unsent, pending, avatar never used, lost claim", got, counts)
	}
	exists := func(id string) bool {
		oid, _ := bson.ObjectIDFromHex(id)
		n, err := coll.CountDocuments(context.Background(), bson.D{{Key: "_id", Value: oid}})
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	files := strings.Join(srv.files(t), " ")
	for _, gone := range []string{unsent.GetId(), pending.GetMedia().GetId(), avatar.GetId(), lost.GetId()} {
		if exists(gone) || strings.Contains(files, gone) {
			t.Errorf("media %s still stored", gone)
		}
	}
	for _, kept := range []string{sent.GetId(), torn.GetId()} {
		if !exists(kept) || !strings.Contains(files, kept) {
			t.Errorf("media %s was deleted", kept)
		}
	}
	var doc struct {
		MessageID *bson.ObjectID `bson:"messageId"`
	}
	if err := coll.FindOne(context.Background(), bson.D{{Key: "_id", Value: tornID}}).Decode(&doc); err != nil || doc.MessageID == nil {
		t.Errorf("torn send's media not repaired: %v, %v", doc.MessageID, err)
	}
}

// TestCleanup_FromArrival: an upload that took long (up to MaxUploadTime)
// has the whole delay from its arrival to be sent, not what is left of
// it from its creation. (The times are short, within the test's access
// tokens' life; the janitor's delay is 5 minutes.)
func TestCleanup_FromArrival(t *testing.T) {
	srv := newServer(t, servertest.WithOwnMongoDatabase(t))
	p := servertest.Protocols[0]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	chatID := privateChat(t, alice, bob)
	const after = 5 * time.Minute
	data := []byte("a slow upload")
	// uploadIn creates an upload whose file arrives d later.
	uploadIn := func(d time.Duration) string {
		t.Helper()
		up, err := alice.createUpload(t, chatID, "slow.txt", "text/plain", len(data))
		if err != nil {
			t.Fatal(err)
		}
		srv.clock.Advance(d)
		if status, body := alice.put(t, up.GetUploadUrl(), bytes.NewReader(data), int64(len(data))); status != http.StatusOK {
			t.Fatalf("PUT: %d %s", status, body)
		}
		return up.GetMedia().GetId()
	}

	// Created with a 1-minute upload URL (the tests'), which its PUT
	// began within; it took 50 s.
	slow := uploadIn(50 * time.Second)
	srv.clock.Advance(after - 20*time.Second)
	if n, err := srv.App.NewMediaJanitor(after).Sweep(context.Background()); err != nil || n != 0 {
		t.Fatalf("a sweep 5m30s after the upload began, 4m40s after its file arrived, deleted %d (%v), want none", n, err)
	}
	if _, err := alice.msgs.SendMessage(context.Background(), req(alice, &parleyv1.SendMessageRequest{
		ChatId: chatID, ClientMessageId: "slow", MediaIds: []string{slow},
	})); err != nil {
		t.Fatalf("SendMessage: %v", err)
	}

	// Past the delay from its arrival, an unsent one goes.
	uploadIn(50 * time.Second)
	srv.clock.Advance(after + time.Minute)
	if n, err := srv.App.NewMediaJanitor(after).Sweep(context.Background()); err != nil || n != 1 {
		t.Fatalf("a sweep past the delay deleted %d (%v), want the unsent upload", n, err)
	}
}

// TestCleanup_DetachedAvatars: an avatar change stops after detaching the
// upload it replaces (DetachGroupAvatar, DetachAvatar: the upload is a
// claim again). Clean-up attaches again an upload whose group or avatar
// still has it, and deletes one whose group moved on.
func TestCleanup_DetachedAvatars(t *testing.T) {
	srv := newServer(t, servertest.WithOwnMongoDatabase(t))
	p := servertest.Protocols[0]
	ctx := context.Background()
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	db := srv.App.Mongo()
	coll := db.Collection("media")
	grp := servertest.GroupChat(t, alice.chats, alice.token, "g", bob.id).GetId()
	other := servertest.GroupChat(t, alice.chats, alice.token, "h", bob.id).GetId()
	groupAvatar := func(chatID, name string) *parleyv1.Media {
		t.Helper()
		m := alice.upload(t, "", name, "image/png", pngImage(t, 40, 40))
		if _, err := alice.chats.UpdateChat(ctx, req(alice, &parleyv1.UpdateChatRequest{ChatId: chatID, AvatarMediaId: m.GetId()})); err != nil {
			t.Fatalf("UpdateChat: %v", err)
		}
		return m
	}
	kept, moved := groupAvatar(grp, "kept.png"), groupAvatar(other, "moved.png")
	own := alice.upload(t, "", "own.png", "image/png", pngImage(t, 40, 40))
	added, err := alice.avatar.AddAvatar(ctx, req(alice, &parleyv1.AddAvatarRequest{MediaId: own.GetId()}))
	if err != nil {
		t.Fatalf("AddAvatar: %v", err)
	}
	// Each change's first step, as the services take it.
	lib := srv.App.MediaLibrary()
	grpID, _ := bson.ObjectIDFromHex(grp)
	otherID, _ := bson.ObjectIDFromHex(other)
	errOf := func(_ media.Claim, err error) error { return err }
	for _, err := range []error{
		errOf(lib.DetachGroupAvatar(ctx, kept.GetUrl(), grpID)),
		errOf(lib.DetachGroupAvatar(ctx, moved.GetUrl(), otherID)),
		errOf(lib.DetachAvatar(ctx, own.GetUrl(), int(added.Msg.GetAvatar().GetId()))),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	keptID, _ := bson.ObjectIDFromHex(kept.GetId())
	movedID, _ := bson.ObjectIDFromHex(moved.GetId())
	ownID, _ := bson.ObjectIDFromHex(own.GetId())
	// The change of the other group got as far as its avatar.
	if _, err := db.Collection("chats").UpdateOne(ctx, bson.D{{Key: "_id", Value: otherID}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "avatarUrl", Value: ""}}}}); err != nil {
		t.Fatal(err)
	}

	srv.clock.Advance(25 * time.Hour)
	n, err := srv.App.NewMediaJanitor(24 * time.Hour).Sweep(ctx)
	if err != nil || n != 1 {
		t.Fatalf("sweep: %d deleted, %v; want 1 (the avatar the group moved on from)", n, err)
	}
	var doc struct {
		GroupID  *bson.ObjectID `bson:"groupId"`
		AvatarID int            `bson:"avatarId"`
	}
	if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: keptID}}).Decode(&doc); err != nil || doc.GroupID == nil || doc.GroupID.Hex() != grp {
		t.Errorf("the group's avatar, detached: group %v, %v; want attached again", doc.GroupID, err)
	}
	doc.GroupID = nil
	if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: ownID}}).Decode(&doc); err != nil || doc.AvatarID == 0 {
		t.Errorf("the user's avatar, detached: avatar %d, %v; want attached again", doc.AvatarID, err)
	}
	if n, err := coll.CountDocuments(ctx, bson.D{{Key: "_id", Value: movedID}}); err != nil || n != 0 {
		t.Errorf("the avatar the group moved on from: %d documents, %v; want 0", n, err)
	}
	files := strings.Join(srv.files(t), " ")
	if strings.Contains(files, moved.GetId()) || !strings.Contains(files, kept.GetId()) || !strings.Contains(files, own.GetId()) {
		t.Errorf("files %s: want %s's gone, %s's and %s's kept", files, moved.GetId(), kept.GetId(), own.GetId())
	}
}

// TestCleanup_OlderVersionsUploads: clean-up reads only uploads marked
// loose. Those an older version stored unmarked are marked once at
// start (MarkLoose); one that an older version attached while marked
// is settled, not deleted.
func TestCleanup_OlderVersionsUploads(t *testing.T) {
	srv := newServer(t, servertest.WithOwnMongoDatabase(t))
	p := servertest.Protocols[0]
	ctx := context.Background()
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	chatID := privateChat(t, alice, bob)
	coll := srv.App.Mongo().Collection("media")
	set := func(m *parleyv1.Media, update bson.D) bson.ObjectID {
		t.Helper()
		id, _ := bson.ObjectIDFromHex(m.GetId())
		if _, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}}, update); err != nil {
			t.Fatal(err)
		}
		return id
	}
	unsent := alice.upload(t, chatID, "unsent.txt", "text/plain", []byte("never sent"))
	unsentID := set(unsent, bson.D{{Key: "$unset", Value: bson.D{{Key: "loose", Value: ""}}}})
	sent := alice.upload(t, chatID, "sent.txt", "text/plain", []byte("sent"))
	if _, err := alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
		ChatId: chatID, ClientMessageId: "sent", MediaIds: []string{sent.GetId()},
	})); err != nil {
		t.Fatal(err)
	}
	sentID := set(sent, bson.D{{Key: "$set", Value: bson.D{{Key: "loose", Value: true}}}})

	srv.clock.Advance(25 * time.Hour)
	janitor := srv.App.NewMediaJanitor(24 * time.Hour)
	if n, err := janitor.Sweep(ctx); err != nil || n != 0 {
		t.Fatalf("sweep before the mark: %d deleted, %v; want 0", n, err)
	}
	if n, err := janitor.MarkLoose(ctx); err != nil || n != 1 {
		t.Fatalf("MarkLoose: %d, %v; want 1 (the unsent upload)", n, err)
	}
	if n, err := janitor.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("sweep: %d deleted, %v; want 1 (the unsent upload)", n, err)
	}
	if n, err := coll.CountDocuments(ctx, bson.D{{Key: "_id", Value: unsentID}}); err != nil || n != 0 {
		t.Errorf("unsent upload: %d documents, %v; want 0", n, err)
	}
	if n, err := coll.CountDocuments(ctx, bson.D{{Key: "_id", Value: sentID}, {Key: "loose", Value: bson.D{{Key: "$exists", Value: false}}}}); err != nil || n != 1 {
		t.Errorf("sent file: %d documents unmarked, %v; want 1, settled", n, err)
	}
	if files := strings.Join(srv.files(t), " "); strings.Contains(files, unsent.GetId()) || !strings.Contains(files, sent.GetId()) {
		t.Errorf("files %s: want %s's gone and %s's kept", files, unsent.GetId(), sent.GetId())
	}
}
