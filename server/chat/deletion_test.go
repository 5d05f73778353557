package chat_test

import (
	"context"
	"testing"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/servertest"
)

// What a deleted member leaves in its chats (AuthService.DeleteAccount):
// its groups go to their longest-standing member, not the oldest account;
// a group with another admin keeps its roles; the private chat stays with
// the other member, closed to sends; the member's own settings and
// messages hidden for itself go.
func TestDeletedMember(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			ctx := context.Background()
			authc := servertest.Client(srv, p, parleyv1connect.NewAuthServiceClient)
			alice, bob, carol := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			// Carol joined alice's group before bob, though her account is
			// newer.
			run := group(t, alice, "alice's", carol, bob).GetId()
			shared := group(t, bob, "bob's", alice).GetId()
			if _, err := bob.chats.SetParticipantRole(ctx, req(bob, &parleyv1.SetParticipantRoleRequest{
				ChatId: shared, UserId: alice.id, Role: parleyv1.Role_ROLE_ADMIN,
			})); err != nil {
				t.Fatalf("SetParticipantRole: %v", err)
			}
			dm := servertest.PrivateChat(t, bob.chats, bob.token, alice.id).GetId()
			servertest.AcceptRequest(t, alice.chats, alice.token, dm)
			m := send(t, bob, dm, "hi alice")
			if _, err := alice.chats.UpdateChatSettings(ctx, req(alice, &parleyv1.UpdateChatSettingsRequest{ChatId: dm, Pinned: new(true)})); err != nil {
				t.Fatalf("UpdateChatSettings: %v", err)
			}
			if _, err := alice.msgs.DeleteMessagesForMe(ctx, req(alice, &parleyv1.DeleteMessagesForMeRequest{ChatId: dm, MessageIds: []string{m.GetId()}})); err != nil {
				t.Fatalf("DeleteMessagesForMe: %v", err)
			}

			if _, err := authc.DeleteAccount(ctx, req(alice, &parleyv1.DeleteAccountRequest{Password: servertest.Password})); err != nil {
				t.Fatalf("DeleteAccount: %v", err)
			}

			if got := roles(getChat(t, bob, run)); len(got) != 2 || got[carol.id] != parleyv1.Role_ROLE_ADMIN || got[bob.id] != parleyv1.Role_ROLE_MEMBER {
				t.Errorf("alice's former group: %v, want carol admin, bob member", got)
			}
			if got := roles(getChat(t, bob, shared)); len(got) != 1 || got[bob.id] != parleyv1.Role_ROLE_ADMIN {
				t.Errorf("bob's group: %v, want bob alone, admin", got)
			}
			if got := roles(getChat(t, bob, dm)); len(got) != 2 {
				t.Errorf("the private chat's participants: %v, want bob and alice", got)
			}
			if msgs := listAll(t, bob, dm); len(msgs) != 1 || msgs[0].GetId() != m.GetId() {
				t.Errorf("bob's private chat holds %v, want his message", msgs)
			}
			_, err := bob.msgs.SendMessage(ctx, req(bob, &parleyv1.SendMessageRequest{ChatId: dm, ClientMessageId: servertest.UniqueName("c"), Text: "alice?"}))
			wantCode(t, err, connect.CodePermissionDenied)
			db := srv.App.Mongo()
			for _, coll := range []string{"chatSettings", "hiddenMessages"} {
				n, err := db.Collection(coll).CountDocuments(ctx, bson.D{{Key: "userId", Value: alice.id}})
				if err != nil || n != 0 {
					t.Errorf("%s of alice: %d (%v), want none", coll, n, err)
				}
			}
		})
	}
}

// A private chat that its recipient declined does not exist for it: the
// requester's account deletion, which closes the chat, tells it nothing.
func TestDeletedMember_DeclinerHearsNothing(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			ctx := context.Background()
			authc := servertest.Client(srv, p, parleyv1connect.NewAuthServiceClient)
			alice, bob := newUser(t, srv, p), newUser(t, srv, p)
			dm := servertest.PrivateChat(t, alice.chats, alice.token, bob.id).GetId()
			send(t, alice, dm, "hi bob")
			if _, err := bob.chats.DeclineChatRequest(ctx, req(bob, &parleyv1.DeclineChatRequestRequest{ChatId: dm})); err != nil {
				t.Fatalf("DeclineChatRequest: %v", err)
			}
			stream := subscribe(t, srv, p, bob)

			if _, err := authc.DeleteAccount(ctx, req(alice, &parleyv1.DeleteAccountRequest{Password: servertest.Password})); err != nil {
				t.Fatalf("DeleteAccount: %v", err)
			}
			// Bob's own group comes after whatever the deletion told him.
			mark := group(t, bob, "after").GetId()
			nextEvent(t, stream, func(ev *parleyv1.Event) bool {
				for _, c := range []*parleyv1.ChatEvent{ev.GetChatUpdated(), ev.GetChatCreated(), ev.GetMemberRemoved()} {
					if c.GetChat().GetId() == dm {
						t.Errorf("bob heard of the chat he declined: %v", ev)
					}
				}
				return ev.GetChatCreated().GetChat().GetId() == mark
			})
		})
	}
}
