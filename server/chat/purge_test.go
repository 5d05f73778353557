package chat_test

import (
	"context"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/servertest"
)

// TestPurge_ChatsWithoutReaders: a group whose last member left, and a
// private chat both of whose members deleted their accounts, go with
// their messages, files, reactions, positions, invite links, avatar and
// Redis keys, once departureMemory has passed (for a retry of the call
// that left, should it have failed to announce the departure); until then
// its invite link leads nowhere. A group with
// a member left, and a private chat with one member deleted, stay.
func TestPurge_ChatsWithoutReaders(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	db := srv.App.Mongo()
	prefix := servertest.SharedStores(t).RedisPrefix
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			alice, bob, carol := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			media := servertest.Client(srv, p, parleyv1connect.NewMediaServiceClient)

			g := group(t, alice, "soon empty", bob).GetId()
			pic := upload(t, srv, p, alice, g, "pic.png", "image/png", servertest.PNG(t, 16, 16))
			res, err := alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
				ChatId: g, ClientMessageId: "with-file", Text: "look", MediaIds: []string{pic.GetId()},
			}))
			if err != nil {
				t.Fatalf("SendMessage: %v", err)
			}
			m := res.Msg.GetMessage()
			// A message deleted by a call that stopped before its file
			// went: the tombstone, with the media still recording it.
			left := upload(t, srv, p, alice, g, "left.png", "image/png", servertest.PNG(t, 16, 16))
			res, err = alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{
				ChatId: g, ClientMessageId: "deleted-part-way", MediaIds: []string{left.GetId()},
			}))
			if err != nil {
				t.Fatalf("SendMessage: %v", err)
			}
			tomb, _ := bson.ObjectIDFromHex(res.Msg.GetMessage().GetId())
			if _, err := db.Collection("messages").UpdateOne(ctx, bson.D{{Key: "_id", Value: tomb}}, bson.D{
				{Key: "$set", Value: bson.D{{Key: "deletedAt", Value: time.Now()}}},
				{Key: "$unset", Value: bson.D{{Key: "attachments", Value: ""}}},
			}); err != nil {
				t.Fatal(err)
			}
			send(t, bob, g, "nice")
			if _, err := bob.msgs.AddReaction(ctx, req(bob, &parleyv1.AddReactionRequest{ChatId: g, MessageId: m.GetId(), Emoji: "👍"})); err != nil {
				t.Fatalf("AddReaction: %v", err)
			}
			avatar := servertest.UploadAvatar(t, srv, media, alice.token, "a.png", "image/png", servertest.PNG(t, 32, 32))
			if _, err := alice.chats.UpdateChat(ctx, req(alice, &parleyv1.UpdateChatRequest{ChatId: g, AvatarMediaId: avatar.GetId()})); err != nil {
				t.Fatalf("UpdateChat: %v", err)
			}
			code := createInvite(t, alice, &parleyv1.CreateInviteLinkRequest{ChatId: g}).GetCode()
			kept := group(t, alice, "kept", bob).GetId()
			send(t, alice, kept, "still read")

			for _, u := range []*user{bob, alice} {
				if _, err := u.chats.LeaveChat(ctx, req(u, &parleyv1.LeaveChatRequest{ChatId: g})); err != nil {
					t.Fatalf("LeaveChat: %v", err)
				}
			}
			if _, err := bob.chats.LeaveChat(ctx, req(bob, &parleyv1.LeaveChatRequest{ChatId: kept})); err != nil {
				t.Fatalf("LeaveChat: %v", err)
			}
			_, err = carol.chats.GetInvite(ctx, req(carol, &parleyv1.GetInviteRequest{Code: code}))
			wantCode(t, err, connect.CodeNotFound)
			_, err = carol.chats.JoinChatByInvite(ctx, req(carol, &parleyv1.JoinChatByInviteRequest{Code: code}))
			wantCode(t, err, connect.CodeNotFound)

			// Within departureMemory, the group stays for a retry.
			if _, err := srv.App.PurgeChats(ctx, time.Now().Add(-time.Minute)); err != nil {
				t.Fatalf("PurgeChats: %v", err)
			}
			gID, _ := bson.ObjectIDFromHex(g)
			if n, err := db.Collection("messages").CountDocuments(ctx, bson.D{{Key: "chatId", Value: gID}}); err != nil || n != 3 {
				t.Errorf("the group's messages before departureMemory passed: %d (%v), want 3", n, err)
			}

			// A private chat with one of its members deleted stays.
			dave, erin := newUser(t, srv, p), newUser(t, srv, p)
			dm := servertest.PrivateChat(t, dave.chats, dave.token, erin.id).GetId()
			servertest.AcceptRequest(t, erin.chats, erin.token, dm)
			send(t, dave, dm, "bye")
			deleteAccount(t, srv, p, dave)

			if _, err := srv.App.PurgeChats(ctx, time.Now().Add(time.Second)); err != nil {
				t.Fatalf("PurgeChats: %v", err)
			}
			wantGone(t, db, gID)
			if n, err := srv.App.Redis().Exists(ctx, prefix+"chat:{"+g+"}:seq", prefix+"chat:{"+g+"}:ver").Result(); err != nil || n != 0 {
				t.Errorf("the group's Redis keys: %d (%v), want none", n, err)
			}
			for _, url := range []string{pic.GetUrl(), left.GetUrl(), avatar.GetUrl()} {
				if status, _ := servertest.Download(t, srv, alice.token, url); status != http.StatusNotFound {
					t.Errorf("GET %s: %d, want 404", url, status)
				}
			}
			for _, id := range []string{pic.GetId(), left.GetId(), avatar.GetId()} {
				oid, _ := bson.ObjectIDFromHex(id)
				if n, err := db.Collection("media").CountDocuments(ctx, bson.D{{Key: "_id", Value: oid}}); err != nil || n != 0 {
					t.Errorf("media %s: %d (%v), want gone", id, n, err)
				}
			}
			if msgs := listAll(t, alice, kept); len(msgs) != 1 {
				t.Errorf("the group with a member holds %d messages, want 1", len(msgs))
			}
			if msgs := listAll(t, erin, dm); len(msgs) != 1 {
				t.Errorf("the private chat with a member left holds %d messages, want 1", len(msgs))
			}

			deleteAccount(t, srv, p, erin)
			if _, err := srv.App.PurgeChats(ctx, time.Now().Add(time.Second)); err != nil {
				t.Fatalf("PurgeChats: %v", err)
			}
			dmID, _ := bson.ObjectIDFromHex(dm)
			wantGone(t, db, dmID)
		})
	}
}

// wantGone fails unless nothing of the chat is left in the chat
// collections.
func wantGone(t *testing.T, db *mongo.Database, chatID bson.ObjectID) {
	t.Helper()
	ctx := context.Background()
	if n, err := db.Collection("chats").CountDocuments(ctx, bson.D{{Key: "_id", Value: chatID}}); err != nil || n != 0 {
		t.Errorf("chat %s: %d (%v), want gone", chatID.Hex(), n, err)
	}
	for _, coll := range []string{"messages", "reactions", "positions", "invites", "hiddenMessages", "chatSettings", "emptyChats"} {
		field := "chatId"
		if coll == "emptyChats" {
			field = "_id"
		}
		if n, err := db.Collection(coll).CountDocuments(ctx, bson.D{{Key: field, Value: chatID}}); err != nil || n != 0 {
			t.Errorf("%s of chat %s: %d (%v), want none", coll, chatID.Hex(), n, err)
		}
	}
}

// deleteAccount deletes u's account.
func deleteAccount(t *testing.T, srv *servertest.Server, p servertest.Protocol, u *user) {
	t.Helper()
	authc := servertest.Client(srv, p, parleyv1connect.NewAuthServiceClient)
	if _, err := authc.DeleteAccount(context.Background(), req(u, &parleyv1.DeleteAccountRequest{Password: servertest.Password})); err != nil {
		t.Fatalf("DeleteAccount: %v", err)
	}
}

// TestPurge_BackfillsEmptyGroups: a group whose last member left before
// emptied chats were recorded is found once, at start-up (chat.Prepare),
// and purged.
func TestPurge_BackfillsEmptyGroups(t *testing.T) {
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	ctx := context.Background()
	db := srv.App.Mongo()
	alice := newUser(t, srv, servertest.Protocols[0])
	g := group(t, alice, "left long ago").GetId()
	send(t, alice, g, "left behind")
	gID, _ := bson.ObjectIDFromHex(g)
	// As an earlier version left it: no member, and no record.
	if _, err := db.Collection("chats").UpdateOne(ctx, bson.D{{Key: "_id", Value: gID}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "participants", Value: bson.A{}}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Collection("schema").DeleteOne(ctx, bson.D{{Key: "_id", Value: "chat-empty-backfill"}}); err != nil {
		t.Fatal(err)
	}
	if err := chat.Prepare(ctx, slog.New(slog.DiscardHandler), db); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if _, err := srv.App.PurgeChats(ctx, time.Now().Add(time.Second)); err != nil {
		t.Fatalf("PurgeChats: %v", err)
	}
	wantGone(t, db, gID)
}
