package media_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

// TestCleanup_ForwardedCopies: clean-up that deletes forwarded copies
// (one whose deletion stopped part-way, one left unattached) keeps the
// file they share with the original, which the original's deletion then
// removes.
func TestCleanup_ForwardedCopies(t *testing.T) {
	srv := newServer(t, servertest.WithOwnMongoDatabase(t))
	ctx := context.Background()
	p := servertest.Protocols[0]
	alice, bob, carol := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
	ab, ac := privateChat(t, alice, bob), privateChat(t, alice, carol)
	coll := srv.App.Mongo().Collection("media")
	pic := alice.upload(t, ab, "p.png", "image/png", pngImage(t, 40, 30))
	res, err := alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
		ChatId: ab, ClientMessageId: "orig", MediaIds: []string{pic.GetId()},
	}))
	if err != nil {
		t.Fatal(err)
	}
	orig := res.Msg.GetMessage()
	var copies []bson.ObjectID
	for _, key := range []string{"f1", "f2"} {
		res, err := alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
			ChatId: ac, ClientMessageId: key, Forward: &parleyv1.ForwardSource{ChatId: ab, MessageId: orig.GetId()},
		}))
		if err != nil {
			t.Fatalf("forward: %v", err)
		}
		id, _ := bson.ObjectIDFromHex(res.Msg.GetMessage().GetAttachments()[0].GetMediaId())
		copies = append(copies, id)
	}
	// One copy's deletion stopped part-way, long ago; the other is in no
	// message. (The clock moves little, so that the access tokens last.)
	if _, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: copies[0]}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "state", Value: "deleting"}, {Key: "stateAt", Value: srv.clock.Now().Add(-time.Hour)}, {Key: "loose", Value: true}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: copies[1]}},
		bson.D{
			{Key: "$unset", Value: bson.D{{Key: "messageId", Value: ""}, {Key: "claim", Value: ""}, {Key: "claimedAt", Value: ""}}},
			{Key: "$set", Value: bson.D{{Key: "loose", Value: true}}},
		}); err != nil {
		t.Fatal(err)
	}
	srv.clock.Advance(time.Minute)
	if n, err := srv.App.NewMediaJanitor(30 * time.Second).Sweep(ctx); err != nil || n != 2 {
		t.Fatalf("sweep: %d, %v; want the 2 copies deleted", n, err)
	}
	if n, err := coll.CountDocuments(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: copies}}}}); err != nil || n != 0 {
		t.Errorf("%d copies left (%v), want none", n, err)
	}
	if res, _ := get(t, srv, bob, pic.GetUrl()); res.StatusCode != http.StatusOK {
		t.Errorf("download of the original after clean-up of its copies: %d", res.StatusCode)
	}
	if res, _ := get(t, srv, bob, pic.GetThumbnailUrl()); res.StatusCode != http.StatusOK {
		t.Errorf("thumbnail of the original after clean-up of its copies: %d", res.StatusCode)
	}

	if _, err := alice.msgs.DeleteMessage(ctx, req(alice, &parleyv1.DeleteMessageRequest{ChatId: ab, MessageId: orig.GetId()})); err != nil {
		t.Fatal(err)
	}
	for _, f := range srv.files(t) {
		if strings.Contains(f, pic.GetId()) {
			t.Errorf("file %s left after every message that had it was deleted", f)
		}
	}
}
