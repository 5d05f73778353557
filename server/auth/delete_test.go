package auth_test

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/parley-chat/parley/ent/deleteduser"
	entuser "github.com/parley-chat/parley/ent/user"
	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/servertest"
)

// person is a signed-up account with the clients it calls through.
type person struct {
	servertest.Account
	c servertest.Clients
}

func signUp(t *testing.T, srv *servertest.Server, p servertest.Protocol, prefix string) person {
	t.Helper()
	c := servertest.NewClients(srv, p)
	return person{Account: servertest.Register(t, c.Auth, servertest.UniqueName(prefix)), c: c}
}

func deleteAccount(u person, password string) error {
	_, err := u.c.Auth.DeleteAccount(context.Background(), servertest.WithToken(&parleyv1.DeleteAccountRequest{Password: password}, u.Token))
	return err
}

// liveStream opens a live stream for u and returns a channel that gets
// the error that ends it.
func liveStream(t *testing.T, u person) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := u.c.Live.Subscribe(ctx, servertest.WithToken(&parleyv1.SubscribeRequest{}, u.Token))
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	// The stream is open once its ready event came.
	for s.Receive() {
		if s.Msg().GetEvent().GetReady() != nil {
			break
		}
	}
	if s.Err() != nil {
		t.Fatalf("Subscribe: %v", s.Err())
	}
	ended := make(chan error, 1)
	go func() {
		for s.Receive() {
		}
		ended <- s.Err()
	}()
	return ended
}

// members returns the chat's participants by user id, as u sees them.
func members(t *testing.T, u person, chatID string) map[int32]parleyv1.Role {
	t.Helper()
	res, err := u.c.Chat.GetChat(context.Background(), servertest.WithToken(&parleyv1.GetChatRequest{ChatId: chatID}, u.Token))
	if err != nil {
		t.Fatalf("GetChat: %v", err)
	}
	out := map[int32]parleyv1.Role{}
	for _, p := range res.Msg.GetChat().GetParticipants() {
		out[p.GetUserId()] = p.GetRole()
	}
	return out
}

func TestAuthService_DeleteAccount(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			ctx := context.Background()
			alice, bob, carol := signUp(t, srv, p, "Del"), signUp(t, srv, p, "bob"), signUp(t, srv, p, "carol")

			// Alice runs a group alone, is a member of bob's, and has a
			// private chat with bob, an avatar, a file she sent and an
			// upload she never finished.
			ownGroup := servertest.GroupChat(t, alice.c.Chat, alice.Token, "alice's", bob.ID, carol.ID).GetId()
			bobsGroup := servertest.GroupChat(t, bob.c.Chat, bob.Token, "bob's", alice.ID, carol.ID).GetId()
			dm := servertest.PrivateChat(t, alice.c.Chat, alice.Token, bob.ID).GetId()
			servertest.AcceptRequest(t, bob.c.Chat, bob.Token, dm)
			hello := servertest.Send(t, alice.c.Message, alice.Token, dm, "hello bob")
			file := servertest.Upload(t, srv, alice.c.Media, alice.Token, ownGroup, "notes.txt", "text/plain", []byte("the notes"))
			sent, err := alice.c.Message.SendMessage(ctx, servertest.WithToken(&parleyv1.SendMessageRequest{
				ChatId: ownGroup, ClientMessageId: servertest.UniqueName("c"), Text: "my notes", MediaIds: []string{file.GetId()},
			}, alice.Token))
			if err != nil {
				t.Fatalf("SendMessage: %v", err)
			}
			img := servertest.UploadAvatar(t, srv, alice.c.Media, alice.Token, "me.png", "image/png", servertest.PNG(t, 8, 8))
			avatar, err := alice.c.Avatar.AddAvatar(ctx, servertest.WithToken(&parleyv1.AddAvatarRequest{MediaId: img.GetId()}, alice.Token))
			if err != nil {
				t.Fatalf("AddAvatar: %v", err)
			}
			pending, err := alice.c.Media.CreateUpload(ctx, servertest.WithToken(&parleyv1.CreateUploadRequest{
				FileName: "later.txt", ContentType: "text/plain", Size: 5, Target: &parleyv1.CreateUploadRequest_ChatId{ChatId: ownGroup},
			}, alice.Token))
			if err != nil {
				t.Fatalf("CreateUpload: %v", err)
			}
			otherSession, err := alice.c.Auth.Login(ctx, connect.NewRequest(&parleyv1.LoginRequest{Login: alice.Username, Password: servertest.Password}))
			if err != nil {
				t.Fatalf("Login: %v", err)
			}
			stream := liveStream(t, alice)
			// Bounded, so that events that never come fail the test.
			bobsCtx, stopBob := context.WithTimeout(ctx, time.Minute)
			t.Cleanup(stopBob)
			bobsStream, err := bob.c.Live.Subscribe(bobsCtx, servertest.WithToken(&parleyv1.SubscribeRequest{}, bob.Token))
			if err != nil {
				t.Fatalf("Subscribe: %v", err)
			}
			t.Cleanup(func() { bobsStream.Close() })

			t.Run("wrong password changes nothing", func(t *testing.T) {
				servertest.WantCode(t, deleteAccount(alice, "not the password"), connect.CodePermissionDenied)
				if _, err := alice.c.User.GetMe(ctx, servertest.WithToken(&parleyv1.GetMeRequest{}, alice.Token)); err != nil {
					t.Errorf("GetMe after a refused deletion: %v", err)
				}
				if got := members(t, bob, ownGroup)[alice.ID]; got != parleyv1.Role_ROLE_ADMIN {
					t.Errorf("alice's role in her group = %v, want admin", got)
				}
				n, err := srv.App.DB().Ent.DeletedUser.Query().Where(deleteduser.ID(int(alice.ID))).Count(ctx)
				if err != nil || n != 0 {
					t.Errorf("tombstones of alice = %d (%v), want 0", n, err)
				}
				if code, _ := servertest.Download(t, srv, bob.Token, avatar.Msg.GetAvatar().GetUrl()); code != http.StatusOK {
					t.Errorf("avatar download = %d, want 200", code)
				}
			})

			// What Redis holds of her: her live event log, and the
			// networks she signed in from.
			prefix := servertest.SharedStores(t).RedisPrefix
			redisKeys := []string{
				prefix + "{u:" + strconv.Itoa(int(alice.ID)) + "}:events",
				prefix + "login-known:user:" + strconv.Itoa(int(alice.ID)),
			}
			for _, k := range redisKeys {
				if n, err := srv.App.Redis().Exists(ctx, k).Result(); err != nil || n != 1 {
					t.Fatalf("before the deletion, %s: %d (%v), want it", k, n, err)
				}
			}

			if err := deleteAccount(alice, servertest.Password); err != nil {
				t.Fatalf("DeleteAccount: %v", err)
			}

			t.Run("sessions end", func(t *testing.T) {
				select {
				case err := <-stream:
					servertest.WantCode(t, err, connect.CodeUnauthenticated)
				case <-time.After(10 * time.Second):
					t.Fatal("the live stream is still open 10 s after the deletion")
				}
				for _, token := range []string{alice.Token, otherSession.Msg.GetTokens().GetAccessToken()} {
					_, err := alice.c.User.GetMe(ctx, servertest.WithToken(&parleyv1.GetMeRequest{}, token))
					servertest.WantCode(t, err, connect.CodeUnauthenticated)
				}
				_, err := alice.c.Auth.Refresh(ctx, connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: alice.Tokens.GetRefreshToken()}))
				servertest.WantCode(t, err, connect.CodeUnauthenticated)
				_, err = alice.c.Auth.Login(ctx, connect.NewRequest(&parleyv1.LoginRequest{Login: alice.Username, Password: servertest.Password}))
				servertest.WantCode(t, err, connect.CodeUnauthenticated)
				_, err = alice.c.Auth.Login(ctx, connect.NewRequest(&parleyv1.LoginRequest{Login: alice.Email, Password: servertest.Password}))
				servertest.WantCode(t, err, connect.CodeUnauthenticated)
			})

			t.Run("others see a deleted account", func(t *testing.T) {
				res, err := bob.c.User.GetUser(ctx, servertest.WithToken(&parleyv1.GetUserRequest{UserId: alice.ID}, bob.Token))
				if err != nil {
					t.Fatalf("GetUser: %v", err)
				}
				if u := res.Msg.GetUser(); !u.GetDeleted() || u.GetId() != alice.ID || u.GetUsername() != "" || u.GetAvatarUrl() != "" {
					t.Errorf("GetUser(alice) = %v, want only id and deleted", u)
				}
				search, err := bob.c.User.SearchUsers(ctx, servertest.WithToken(&parleyv1.SearchUsersRequest{Prefix: alice.Username}, bob.Token))
				if err != nil {
					t.Fatalf("SearchUsers: %v", err)
				}
				if n := len(search.Msg.GetUsers()); n != 0 {
					t.Errorf("SearchUsers(%q) found %d users, want none", alice.Username, n)
				}
				_, err = carol.c.Chat.CreatePrivateChat(ctx, servertest.WithToken(&parleyv1.CreatePrivateChatRequest{PeerId: alice.ID}, carol.Token))
				servertest.WantCode(t, err, connect.CodeNotFound)
				_, err = bob.c.Chat.AddParticipants(ctx, servertest.WithToken(&parleyv1.AddParticipantsRequest{ChatId: bobsGroup, UserIds: []int32{alice.ID}}, bob.Token))
				servertest.WantCode(t, err, connect.CodeNotFound)
				_, err = carol.c.Chat.CreateGroupChat(ctx, servertest.WithToken(&parleyv1.CreateGroupChatRequest{Name: "again", MemberIds: []int32{alice.ID}}, carol.Token))
				servertest.WantCode(t, err, connect.CodeNotFound)
			})

			t.Run("groups", func(t *testing.T) {
				own := members(t, bob, ownGroup)
				if _, in := own[alice.ID]; in {
					t.Errorf("alice is still in her group: %v", own)
				}
				// Bob joined her group before carol: he runs it now.
				if own[bob.ID] != parleyv1.Role_ROLE_ADMIN || own[carol.ID] != parleyv1.Role_ROLE_MEMBER {
					t.Errorf("roles in alice's former group = %v, want bob admin, carol member", own)
				}
				bobs := members(t, carol, bobsGroup)
				if _, in := bobs[alice.ID]; in || bobs[bob.ID] != parleyv1.Role_ROLE_ADMIN || bobs[carol.ID] != parleyv1.Role_ROLE_MEMBER {
					t.Errorf("roles in bob's group = %v, want bob admin, carol member, no alice", bobs)
				}
				// Bob heard of both, as of any member who leaves.
				var promoted, removed []string
				for bobsStream.Receive() {
					ev := bobsStream.Msg().GetEvent()
					if rc := ev.GetRoleChanged(); rc != nil && slices.Contains(rc.GetUserIds(), bob.ID) {
						promoted = append(promoted, rc.GetChat().GetId())
					}
					if mr := ev.GetMemberRemoved(); mr != nil && slices.Contains(mr.GetUserIds(), alice.ID) {
						removed = append(removed, mr.GetChat().GetId())
					}
					if len(removed) == 2 {
						break
					}
				}
				slices.Sort(removed)
				want := []string{ownGroup, bobsGroup}
				slices.Sort(want)
				if !slices.Equal(promoted, []string{ownGroup}) || !slices.Equal(removed, want) {
					t.Errorf("bob's events: promoted in %v, alice removed from %v; want %v and %v", promoted, removed, []string{ownGroup}, want)
				}
				// Her messages stay, with their files.
				msgs, err := servertest.ListMessagesAfter(carol.c.Message, carol.Token, ownGroup, 0)
				if err != nil {
					t.Fatalf("ListMessages: %v", err)
				}
				i := slices.IndexFunc(msgs, func(m *parleyv1.Message) bool { return m.GetId() == sent.Msg.GetMessage().GetId() })
				if i < 0 || msgs[i].GetSenderId() != alice.ID || len(msgs[i].GetAttachments()) != 1 {
					t.Fatalf("carol's view of alice's message: %v", msgs)
				}
				if code, body := servertest.Download(t, srv, carol.Token, msgs[i].GetAttachments()[0].GetUrl()); code != http.StatusOK || string(body) != "the notes" {
					t.Errorf("download of alice's file = %d %q, want 200 %q", code, body, "the notes")
				}
			})

			t.Run("private chat", func(t *testing.T) {
				if _, in := members(t, bob, dm)[alice.ID]; !in {
					t.Error("alice is no longer a participant of her private chat with bob")
				}
				msgs, err := servertest.ListMessagesAfter(bob.c.Message, bob.Token, dm, 0)
				if err != nil {
					t.Fatalf("ListMessages: %v", err)
				}
				if len(msgs) != 1 || msgs[0].GetId() != hello.GetId() || msgs[0].GetSenderId() != alice.ID {
					t.Errorf("bob's private chat with alice holds %v, want her message", msgs)
				}
				_, err = bob.c.Message.SendMessage(ctx, servertest.WithToken(&parleyv1.SendMessageRequest{
					ChatId: dm, ClientMessageId: servertest.UniqueName("c"), Text: "are you there?",
				}, bob.Token))
				servertest.WantCode(t, err, connect.CodePermissionDenied)
			})

			t.Run("files", func(t *testing.T) {
				if code, _ := servertest.Download(t, srv, bob.Token, avatar.Msg.GetAvatar().GetUrl()); code != http.StatusNotFound {
					t.Errorf("avatar download = %d, want 404", code)
				}
				for _, id := range []string{img.GetId(), pending.Msg.GetMedia().GetId()} {
					oid, _ := bson.ObjectIDFromHex(id)
					n, err := srv.App.Mongo().Collection("media").CountDocuments(ctx, bson.D{{Key: "_id", Value: oid}})
					if err != nil || n != 0 {
						t.Errorf("media %s: %d documents (%v), want none", id, n, err)
					}
				}
			})

			t.Run("redis", func(t *testing.T) {
				for _, k := range redisKeys {
					if n, err := srv.App.Redis().Exists(ctx, k).Result(); err != nil || n != 0 {
						t.Errorf("%s: %d (%v), want none", k, n, err)
					}
				}
			})

			t.Run("rows", func(t *testing.T) {
				if n := countUserRows(t, srv, alice.ID); n != 0 {
					t.Errorf("alice's users rows = %d, want 0", n)
				}
				tomb, err := srv.App.DB().Ent.DeletedUser.Get(ctx, int(alice.ID))
				if err != nil {
					t.Fatalf("tombstone: %v", err)
				}
				if tomb.FinishedAt == nil {
					t.Error("the tombstone is not marked finished")
				}
			})

			t.Run("username held back, email free", func(t *testing.T) {
				for _, name := range []string{alice.Username, "dEL" + alice.Username[3:]} {
					_, err := carol.c.Auth.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{
						Username: name, Email: servertest.UniqueName("x") + "@example.com", Password: servertest.Password,
					}))
					servertest.WantCode(t, err, connect.CodeAlreadyExists)
				}
				_, err := carol.c.User.UpdateProfile(ctx, servertest.WithToken(&parleyv1.UpdateProfileRequest{Username: &alice.Username}, carol.Token))
				servertest.WantCode(t, err, connect.CodeAlreadyExists)
				// The same person signs up again with the email, under a
				// new name.
				again := servertest.RegisterWith(t, carol.c.Auth, &parleyv1.RegisterRequest{
					Username: servertest.UniqueName("again"), Email: alice.Email, Password: servertest.Password,
				})
				if again.ID == alice.ID {
					t.Errorf("the new account got the deleted one's id %d", again.ID)
				}

				// 30 days on, the name is free.
				_, err = srv.App.DB().SQL.ExecContext(ctx, `UPDATE deleted_users SET deleted_at = $1 WHERE user_id = $2`,
					time.Now().Add(-30*24*time.Hour-time.Minute), alice.ID)
				if err != nil {
					t.Fatal(err)
				}
				back := servertest.RegisterWith(t, carol.c.Auth, &parleyv1.RegisterRequest{
					Username: alice.Username, Email: servertest.UniqueName("x") + "@example.com", Password: servertest.Password,
				})
				res, err := bob.c.User.GetUser(ctx, servertest.WithToken(&parleyv1.GetUserRequest{UserId: back.ID}, bob.Token))
				if err != nil || res.Msg.GetUser().GetUsername() != alice.Username || res.Msg.GetUser().GetDeleted() {
					t.Errorf("GetUser(new %q) = %v, %v", alice.Username, res.Msg.GetUser(), err)
				}
				// The old id still reads as the deleted account.
				old, err := bob.c.User.GetUser(ctx, servertest.WithToken(&parleyv1.GetUserRequest{UserId: alice.ID}, bob.Token))
				if err != nil || !old.Msg.GetUser().GetDeleted() {
					t.Errorf("GetUser(deleted id) = %v, %v; want deleted", old.Msg.GetUser(), err)
				}
			})
		})
	}
}

// countUserRows returns how many users rows have the id.
func countUserRows(t *testing.T, srv *servertest.Server, id int32) int {
	t.Helper()
	n, err := srv.App.DB().Ent.User.Query().Where(entuser.ID(int(id))).Count(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A deletion that stopped right after its tombstone (its instance died) is
// finished by the sweep, and the account was deleted to everyone from the
// tombstone on.
func TestAuthService_DeletionSweep(t *testing.T) {
	srv := servertest.New(t)
	p := servertest.Protocols[0]
	ctx := context.Background()
	alice, bob := signUp(t, srv, p, "swept"), signUp(t, srv, p, "bob")
	group := servertest.GroupChat(t, alice.c.Chat, alice.Token, "alice's", bob.ID).GetId()
	stream := liveStream(t, alice)
	err := srv.App.DB().Ent.DeletedUser.Create().SetID(int(alice.ID)).SetUsernameKey(alice.Username).
		SetDeletedAt(time.Now().Add(-10 * time.Minute)).Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}

	_, err = alice.c.Auth.Login(ctx, connect.NewRequest(&parleyv1.LoginRequest{Login: alice.Username, Password: servertest.Password}))
	servertest.WantCode(t, err, connect.CodeUnauthenticated)
	res, err := bob.c.User.GetUser(ctx, servertest.WithToken(&parleyv1.GetUserRequest{UserId: alice.ID}, bob.Token))
	if err != nil || !res.Msg.GetUser().GetDeleted() {
		t.Errorf("GetUser(alice) before the sweep = %v, %v; want deleted", res.Msg.GetUser(), err)
	}
	_, err = bob.c.Avatar.ListAvatars(ctx, servertest.WithToken(&parleyv1.ListAvatarsRequest{UserId: alice.ID}, bob.Token))
	servertest.WantCode(t, err, connect.CodeNotFound)

	sweep, err := srv.App.NewDeletionSweep()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sweep.Sweep(ctx); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	select {
	case err := <-stream:
		servertest.WantCode(t, err, connect.CodeUnauthenticated)
	case <-time.After(10 * time.Second):
		t.Fatal("the live stream is still open 10 s after the sweep")
	}
	if got := members(t, bob, group); len(got) != 1 || got[bob.ID] != parleyv1.Role_ROLE_ADMIN {
		t.Errorf("the group after the sweep = %v, want bob alone, admin", got)
	}
	if n := countUserRows(t, srv, alice.ID); n != 0 {
		t.Errorf("alice's users rows = %d, want 0", n)
	}
	tomb, err := srv.App.DB().Ent.DeletedUser.Get(ctx, int(alice.ID))
	if err != nil || tomb.FinishedAt == nil {
		t.Errorf("tombstone after the sweep = %v, %v; want finished", tomb, err)
	}
	// Nothing is left to do.
	unfinished, err := srv.App.DB().Ent.DeletedUser.Query().Where(deleteduser.FinishedAtIsNil()).Count(ctx)
	if err != nil || unfinished != 0 {
		t.Errorf("unfinished deletions after the sweep = %d (%v), want 0", unfinished, err)
	}
}

// Two devices of one user delete the account at once: both may run the
// deletion together, and the result is one deletion.
func TestAuthService_DeleteAccountTwiceAtOnce(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			ctx := context.Background()
			alice, bob, carol := signUp(t, srv, p, "twice"), signUp(t, srv, p, "bob"), signUp(t, srv, p, "carol")
			group := servertest.GroupChat(t, alice.c.Chat, alice.Token, "alice's", bob.ID, carol.ID).GetId()

			_, err := alice.c.Auth.DeleteAccount(ctx, connect.NewRequest(&parleyv1.DeleteAccountRequest{Password: servertest.Password}))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
			servertest.WantCode(t, deleteAccount(alice, ""), connect.CodeInvalidArgument)

			phone := alice
			login, err := alice.c.Auth.Login(ctx, connect.NewRequest(&parleyv1.LoginRequest{Login: alice.Username, Password: servertest.Password}))
			if err != nil {
				t.Fatalf("Login: %v", err)
			}
			laptop := alice
			laptop.Token = login.Msg.GetTokens().GetAccessToken()
			errs := make(chan error, 2)
			for _, u := range []person{phone, laptop} {
				go func() { errs <- deleteAccount(u, servertest.Password) }()
			}
			ok := 0
			for range 2 {
				switch err := <-errs; connect.CodeOf(err) {
				case connect.CodeUnauthenticated: // the other one ended this session first
				default:
					if err != nil {
						t.Errorf("DeleteAccount: %v", err)
					}
					ok++
				}
			}
			if ok == 0 {
				t.Error("neither DeleteAccount succeeded")
			}
			got := members(t, carol, group)
			if len(got) != 2 || got[bob.ID] != parleyv1.Role_ROLE_ADMIN || got[carol.ID] != parleyv1.Role_ROLE_MEMBER {
				t.Errorf("the group = %v, want bob admin and carol member", got)
			}
			if n := countUserRows(t, srv, alice.ID); n != 0 {
				t.Errorf("alice's users rows = %d, want 0", n)
			}
		})
	}
}

// A stolen session cannot guess the password through DeleteAccount faster
// than through Login: the guesses count towards a limit as large as the
// account's logins' from one address.
func TestAuthService_DeleteAccountRateLimited(t *testing.T) {
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) {
		c.RedisPrefix += "deletelimits:"
		c.RateLimits = auth.RateLimits{
			LoginFailuresPerAccount: 3, LoginAttemptsPerAddress: 100, LoginWindow: time.Hour,
			RegistrationsPerAddress: 10, RegistrationWindow: time.Hour,
		}
	}))
	alice := signUp(t, srv, servertest.Protocols[1], "guessed")
	for range 3 {
		servertest.WantCode(t, deleteAccount(alice, "a guess"), connect.CodePermissionDenied)
	}
	servertest.WantCode(t, deleteAccount(alice, servertest.Password), connect.CodeResourceExhausted)
	if _, err := alice.c.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, alice.Token)); err != nil {
		t.Errorf("GetMe after refused deletions: %v", err)
	}
}
