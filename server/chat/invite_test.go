package chat_test

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/doclock"
	"github.com/parley-chat/parley/server/servertest"
)

func createInvite(t *testing.T, u *user, r *parleyv1.CreateInviteLinkRequest) *parleyv1.InviteLink {
	t.Helper()
	res, err := u.chats.CreateInviteLink(context.Background(), req(u, r))
	if err != nil {
		t.Fatalf("CreateInviteLink: %v", err)
	}
	return res.Msg.GetInviteLink()
}

func join(u *user, code string) (*parleyv1.Chat, error) {
	res, err := u.chats.JoinChatByInvite(context.Background(), req(u, &parleyv1.JoinChatByInviteRequest{Code: code}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetChat(), nil
}

func TestInvites_JoinByLink(t *testing.T) {
	clock := servertest.NewClock()
	srv := servertest.New(t, servertest.WithConfig(func(cfg *app.Config) { cfg.Now = clock.Now }))
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			admin, member := newUser(t, srv, p), newUser(t, srv, p)
			first, second, third := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			g := group(t, admin, "club", member)
			if _, err := admin.chats.UpdateChat(context.Background(), req(admin, &parleyv1.UpdateChatRequest{
				ChatId: g.GetId(), Description: proto.String("a club for testers"),
			})); err != nil {
				t.Fatal(err)
			}
			history := send(t, admin, g.GetId(), "before anyone joined")
			link := createInvite(t, admin, &parleyv1.CreateInviteLinkRequest{ChatId: g.GetId(), UsageLimit: 2})
			adminLive := subscribe(t, srv, p, admin)

			info, err := first.chats.GetInvite(context.Background(), req(first, &parleyv1.GetInviteRequest{Code: link.GetCode()}))
			if err != nil {
				t.Fatal(err)
			}
			if got := info.Msg; got.GetName() != "club" || got.GetDescription() != "a club for testers" || got.GetMemberCount() != 2 || got.GetMember() {
				t.Errorf("GetInvite = %v", got)
			}
			c, err := join(first, link.GetCode())
			if err != nil {
				t.Fatalf("join: %v", err)
			}
			if c.GetId() != g.GetId() || c.GetRole() != parleyv1.Role_ROLE_MEMBER || c.GetUnreadCount() != 0 {
				t.Errorf("joined chat: id %s role %v unread %d; want %s, member, 0 unread", c.GetId(), c.GetRole(), c.GetUnreadCount(), g.GetId())
			}
			if msgs := listAll(t, first, g.GetId()); len(msgs) != 1 || msgs[0].GetId() != history.GetId() {
				t.Errorf("the new member lists %v, want the history from before it joined", msgs)
			}
			ev := nextEvent(t, adminLive, func(ev *parleyv1.Event) bool { return ev.GetMembersAdded() != nil })
			if added := ev.GetMembersAdded(); added.GetActorId() != first.id || len(added.GetUserIds()) != 1 || added.GetUserIds()[0] != first.id {
				t.Errorf("members_added = %v, want the joiner as actor and member", added)
			}
			// Joining again uses no join.
			if _, err := join(first, link.GetCode()); err != nil {
				t.Errorf("a member joining again: %v", err)
			}
			if _, err := join(second, link.GetCode()); err != nil {
				t.Fatalf("second join: %v", err)
			}
			_, err = join(third, link.GetCode())
			wantCode(t, err, connect.CodeNotFound)
			links, err := admin.chats.ListInviteLinks(context.Background(), req(admin, &parleyv1.ListInviteLinksRequest{ChatId: g.GetId()}))
			if err != nil {
				t.Fatal(err)
			}
			if got := links.Msg.GetInviteLinks(); len(got) != 1 || got[0].GetUsageCount() != 2 {
				t.Errorf("ListInviteLinks = %v, want one link used twice", got)
			}
			if n := len(getChat(t, admin, g.GetId()).GetParticipants()); n != 4 {
				t.Errorf("%d members after two joins, want 4", n)
			}

			// Revoked and expired links lead nowhere.
			open := createInvite(t, admin, &parleyv1.CreateInviteLinkRequest{ChatId: g.GetId()})
			if _, err := admin.chats.RevokeInviteLink(context.Background(), req(admin, &parleyv1.RevokeInviteLinkRequest{ChatId: g.GetId(), Code: open.GetCode()})); err != nil {
				t.Fatal(err)
			}
			_, err = third.chats.GetInvite(context.Background(), req(third, &parleyv1.GetInviteRequest{Code: open.GetCode()}))
			wantCode(t, err, connect.CodeNotFound)
			_, err = join(third, open.GetCode())
			wantCode(t, err, connect.CodeNotFound)
			soon := createInvite(t, admin, &parleyv1.CreateInviteLinkRequest{ChatId: g.GetId(), ExpireTime: timestamppb.New(clock.Now().Add(time.Minute))})
			clock.Advance(2 * time.Minute)
			_, err = join(third, soon.GetCode())
			wantCode(t, err, connect.CodeNotFound)
			_, err = join(third, "AAAAAAAAAAAAAAAAAAAAAA")
			wantCode(t, err, connect.CodeNotFound)
			if getChat(t, admin, g.GetId()).GetParticipants()[len(getChat(t, admin, g.GetId()).GetParticipants())-1].GetUserId() == third.id {
				t.Errorf("a refused join made the user a member")
			}
		})
	}
}

func TestInvites_Authorization(t *testing.T) {
	servertest.SkipOnEmbeddedMongo(t) // the same checks on any store; minutes on FerretDB 1.x
	srv := servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			admin, member, removed, outsider := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			g := group(t, admin, "g", member, removed)
			if _, err := admin.chats.RemoveParticipant(context.Background(), req(admin, &parleyv1.RemoveParticipantRequest{ChatId: g.GetId(), UserId: removed.id})); err != nil {
				t.Fatal(err)
			}
			link := createInvite(t, admin, &parleyv1.CreateInviteLinkRequest{ChatId: g.GetId()})
			for _, tc := range []struct {
				u    *user
				code connect.Code
			}{{member, connect.CodePermissionDenied}, {removed, connect.CodeNotFound}, {outsider, connect.CodeNotFound}} {
				_, err := tc.u.chats.CreateInviteLink(context.Background(), req(tc.u, &parleyv1.CreateInviteLinkRequest{ChatId: g.GetId()}))
				wantCode(t, err, tc.code)
				_, err = tc.u.chats.ListInviteLinks(context.Background(), req(tc.u, &parleyv1.ListInviteLinksRequest{ChatId: g.GetId()}))
				wantCode(t, err, tc.code)
				_, err = tc.u.chats.RevokeInviteLink(context.Background(), req(tc.u, &parleyv1.RevokeInviteLinkRequest{ChatId: g.GetId(), Code: link.GetCode()}))
				wantCode(t, err, tc.code)
			}
			priv := servertest.PrivateChat(t, admin.chats, admin.token, member.id)
			_, err := admin.chats.CreateInviteLink(context.Background(), req(admin, &parleyv1.CreateInviteLinkRequest{ChatId: priv.GetId()}))
			wantCode(t, err, connect.CodeFailedPrecondition)
			_, err = admin.chats.CreateInviteLink(context.Background(), req(admin, &parleyv1.CreateInviteLinkRequest{ChatId: g.GetId(), ExpireTime: timestamppb.New(time.Now().Add(-time.Hour))}))
			wantCode(t, err, connect.CodeInvalidArgument)
			_, err = admin.chats.JoinChatByInvite(context.Background(), req(admin, &parleyv1.JoinChatByInviteRequest{Code: "not a code"}))
			wantCode(t, err, connect.CodeInvalidArgument)
			// A removed member may come back by a link.
			if _, err := join(removed, link.GetCode()); err != nil {
				t.Errorf("a removed member joining by a link: %v", err)
			}
		})
	}
}

// TestInvites_RaceToLimit has ten users join by a link of three joins at
// once: three get in.
func TestInvites_RaceToLimit(t *testing.T) {
	srv := servertest.New(t)
	p := servertest.Protocols[0]
	admin := newUser(t, srv, p)
	g := group(t, admin, "g")
	link := createInvite(t, admin, &parleyv1.CreateInviteLinkRequest{ChatId: g.GetId(), UsageLimit: 3})
	var users []*user
	for range 10 {
		users = append(users, newUser(t, srv, p))
	}
	var wg sync.WaitGroup
	errs := make([]error, len(users))
	for i, u := range users {
		wg.Go(func() { _, errs[i] = join(u, link.GetCode()) })
	}
	wg.Wait()
	joined := 0
	for _, err := range errs {
		switch {
		case err == nil:
			joined++
		case connect.CodeOf(err) != connect.CodeNotFound:
			t.Errorf("a join past the limit: %v, want not_found", err)
		}
	}
	if n := len(getChat(t, admin, g.GetId()).GetParticipants()); joined != 3 || n != 4 {
		t.Errorf("%d joins succeeded and the group has %d members; want 3 and 4", joined, n)
	}
}

func TestGroupAvatar(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			admin, member, outsider := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			g := group(t, admin, "g", member)
			media := servertest.Client(srv, p, parleyv1connect.NewMediaServiceClient)
			img := servertest.PNG(t, 32, 32)
			first := servertest.UploadAvatar(t, srv, media, admin.token, "a.png", "image/png", img)
			setAvatar := func(u *user, r *parleyv1.UpdateChatRequest) (*parleyv1.Chat, error) {
				r.ChatId = g.GetId()
				res, err := u.chats.UpdateChat(context.Background(), req(u, r))
				if err != nil {
					return nil, err
				}
				return res.Msg.GetChat(), nil
			}
			c, err := setAvatar(admin, &parleyv1.UpdateChatRequest{AvatarMediaId: first.GetId()})
			if err != nil {
				t.Fatal(err)
			}
			if c.GetAvatarUrl() != first.GetUrl() || getChat(t, member, g.GetId()).GetAvatarUrl() != first.GetUrl() {
				t.Fatalf("avatar_url = %q, want %q", c.GetAvatarUrl(), first.GetUrl())
			}
			if code, body := servertest.Download(t, srv, member.token, first.GetUrl()); code != 200 || !bytes.Equal(body, img) {
				t.Errorf("a member downloading the group's avatar: %d, %d bytes", code, len(body))
			}
			// Replacing it deletes the old file; making it the avatar
			// again (a retry) changes nothing; an upload used once
			// cannot be used elsewhere; only admins; others' uploads
			// are not found.
			second := servertest.UploadAvatar(t, srv, media, admin.token, "b.png", "image/png", img)
			if _, err := setAvatar(admin, &parleyv1.UpdateChatRequest{AvatarMediaId: second.GetId()}); err != nil {
				t.Fatal(err)
			}
			if code, _ := servertest.Download(t, srv, member.token, first.GetUrl()); code != 404 {
				t.Errorf("the replaced avatar's file answers %d, want 404", code)
			}
			if c, err := setAvatar(admin, &parleyv1.UpdateChatRequest{AvatarMediaId: second.GetId()}); err != nil || c.GetAvatarUrl() != second.GetUrl() {
				t.Fatalf("the same avatar again: %v, %v", c.GetAvatarUrl(), err)
			}
			if code, _ := servertest.Download(t, srv, member.token, second.GetUrl()); code != 200 {
				t.Errorf("the avatar set again answers %d, want 200", code)
			}
			other := group(t, admin, "other")
			_, err = admin.chats.UpdateChat(context.Background(), req(admin, &parleyv1.UpdateChatRequest{ChatId: other.GetId(), AvatarMediaId: second.GetId()}))
			wantCode(t, err, connect.CodeAlreadyExists)
			mine := servertest.UploadAvatar(t, srv, media, member.token, "m.png", "image/png", img)
			_, err = setAvatar(member, &parleyv1.UpdateChatRequest{AvatarMediaId: mine.GetId()})
			wantCode(t, err, connect.CodePermissionDenied)
			_, err = setAvatar(outsider, &parleyv1.UpdateChatRequest{AvatarMediaId: mine.GetId()})
			wantCode(t, err, connect.CodeNotFound)
			_, err = setAvatar(admin, &parleyv1.UpdateChatRequest{AvatarMediaId: mine.GetId(), Name: proto.String("renamed")})
			wantCode(t, err, connect.CodeNotFound)
			if got := getChat(t, member, g.GetId()); got.GetAvatarUrl() != second.GetUrl() || got.GetName() != "g" {
				t.Errorf("after refused changes the avatar is %q and the name %q, want %q and %q", got.GetAvatarUrl(), got.GetName(), second.GetUrl(), "g")
			}
			c, err = setAvatar(admin, &parleyv1.UpdateChatRequest{RemoveAvatar: true})
			if err != nil {
				t.Fatal(err)
			}
			if c.GetAvatarUrl() != "" {
				t.Errorf("after removal avatar_url = %q", c.GetAvatarUrl())
			}
			if code, _ := servertest.Download(t, srv, member.token, second.GetUrl()); code != 404 {
				t.Errorf("the removed avatar's file answers %d, want 404", code)
			}
		})
	}
}

// TestGroupAvatar_AdminDemotedWhileWaiting: a change of a group's avatar
// waiting for the avatar's lock, whose caller stops being an admin
// meanwhile, is refused and changes nothing: the role is checked again
// under the lock.
func TestGroupAvatar_AdminDemotedWhileWaiting(t *testing.T) {
	calls := &servertest.StoreCalls{}
	srv := servertest.New(t, servertest.WithStoreCalls(calls))
	p := servertest.Protocols[0]
	ctx := context.Background()
	admin, other := newUser(t, srv, p), newUser(t, srv, p)
	g := group(t, admin, "g", other)
	if _, err := admin.chats.SetParticipantRole(ctx, req(admin, &parleyv1.SetParticipantRoleRequest{ChatId: g.GetId(), UserId: other.id, Role: parleyv1.Role_ROLE_ADMIN})); err != nil {
		t.Fatal(err)
	}
	media := servertest.Client(srv, p, parleyv1connect.NewMediaServiceClient)
	img := servertest.UploadAvatar(t, srv, media, other.token, "a.png", "image/png", servertest.PNG(t, 32, 32))

	// The test holds the avatar's lock while the other admin's change
	// waits for it and the admin demotes them.
	locks := doclock.New(srv.App.Redis(), servertest.SharedStores(t).RedisPrefix+"chat:avatar:")
	release, held, holder := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		holder <- locks.Do(ctx, g.GetId(), func() error { close(held); <-release; return nil })
	}()
	<-held
	calls.Reset()
	changed := make(chan error, 1)
	go func() {
		_, err := other.chats.UpdateChat(ctx, req(other, &parleyv1.UpdateChatRequest{ChatId: g.GetId(), AvatarMediaId: img.GetId()}))
		changed <- err
	}()
	// The change waits for the lock once it tries to take it (a
	// script call: the session check before it is an HMGET).
	for calls.Of(parleyv1connect.ChatServiceUpdateChatProcedure).RedisCommands["evalsha"] == 0 {
		select {
		case err := <-changed:
			t.Fatalf("the change ended before it waited for the lock: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	if _, err := admin.chats.SetParticipantRole(ctx, req(admin, &parleyv1.SetParticipantRoleRequest{ChatId: g.GetId(), UserId: other.id, Role: parleyv1.Role_ROLE_MEMBER})); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-holder; err != nil {
		t.Fatal(err)
	}
	wantCode(t, <-changed, connect.CodePermissionDenied)
	if got := getChat(t, admin, g.GetId()).GetAvatarUrl(); got != "" {
		t.Errorf("the group's avatar is %q after a change its caller was no longer admin for; want none", got)
	}
}

// TestInvites_EveryLinkInUseListed: a group's links in use are bounded,
// and all listed, however many revoked ones came after them, so that an
// admin can always find and revoke a link another made.
func TestInvites_EveryLinkInUseListed(t *testing.T) {
	servertest.SkipOnEmbeddedMongo(t) // hundreds of calls; minutes on FerretDB 1.x
	srv := servertest.New(t)
	admin := newUser(t, srv, servertest.Protocols[0])
	g := group(t, admin, "g")
	list := func() []*parleyv1.InviteLink {
		t.Helper()
		res, err := admin.chats.ListInviteLinks(context.Background(), req(admin, &parleyv1.ListInviteLinksRequest{ChatId: g.GetId()}))
		if err != nil {
			t.Fatalf("ListInviteLinks: %v", err)
		}
		return res.Msg.GetInviteLinks()
	}
	revoke := func(code string) {
		t.Helper()
		if _, err := admin.chats.RevokeInviteLink(context.Background(), req(admin, &parleyv1.RevokeInviteLinkRequest{ChatId: g.GetId(), Code: code})); err != nil {
			t.Fatalf("RevokeInviteLink: %v", err)
		}
	}
	secret := createInvite(t, admin, &parleyv1.CreateInviteLinkRequest{ChatId: g.GetId()})
	for range 100 {
		revoke(createInvite(t, admin, &parleyv1.CreateInviteLinkRequest{ChatId: g.GetId()}).GetCode())
	}
	links := list()
	if len(links) == 0 || links[0].GetCode() != secret.GetCode() {
		t.Fatalf("the link in use is not listed first among %d links", len(links))
	}
	if len(links) != 101 || links[1].GetRevokedAt() == nil {
		t.Errorf("%d links listed, want the one in use and the 100 newest revoked", len(links))
	}
	// A link whose joins are all taken is in use no more.
	single := createInvite(t, admin, &parleyv1.CreateInviteLinkRequest{ChatId: g.GetId(), UsageLimit: 1})
	if _, err := join(newUser(t, srv, servertest.Protocols[0]), single.GetCode()); err != nil {
		t.Fatalf("join by a link of one join: %v", err)
	}
	for range 99 {
		createInvite(t, admin, &parleyv1.CreateInviteLinkRequest{ChatId: g.GetId()})
	}
	_, err := admin.chats.CreateInviteLink(context.Background(), req(admin, &parleyv1.CreateInviteLinkRequest{ChatId: g.GetId()}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	inUse := 0
	for i, l := range list() {
		if l.GetRevokedAt() == nil && l.GetCode() != single.GetCode() {
			if inUse++; i != inUse-1 {
				t.Errorf("a link in use listed %dth, after links out of use", i+1)
			}
		}
	}
	if inUse != 100 {
		t.Errorf("%d links in use listed, want 100", inUse)
	}
	revoke(secret.GetCode())
	createInvite(t, admin, &parleyv1.CreateInviteLinkRequest{ChatId: g.GetId()})
}
