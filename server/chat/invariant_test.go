package chat_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"connectrpc.com/connect"

	"github.com/parley-chat/parley/ent"
	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/servertest"
)

// twoInstances starts two servers on one MongoDB database (and the
// package's shared PostgreSQL, Redis and signing key), as two instances
// of one deployment.
func twoInstances(t *testing.T) (*servertest.Server, *servertest.Server) {
	t.Helper()
	a := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	b := servertest.New(t, servertest.WithConfig(func(c *app.Config) { c.MongoDatabase = a.App.Mongo().Name() }))
	return a, b
}

// seedUsers creates n accounts straight in PostgreSQL (signing up through
// the API hashes a password each time) and returns their ids.
func seedUsers(t *testing.T, srv *servertest.Server, n int) []int32 {
	t.Helper()
	client := srv.App.DB().Ent
	ids := make([]int32, 0, n)
	for len(ids) < n {
		batch := min(n-len(ids), 200)
		creates := make([]*ent.UserCreate, batch)
		for i := range creates {
			name := fmt.Sprintf("seed%d", seq.Add(1))
			creates[i] = client.User.Create().SetUsername(name).SetEmail(name + "@example.com").SetPasswordHash("x")
		}
		users, err := client.User.CreateBulk(creates...).Save(context.Background())
		if err != nil {
			t.Fatalf("seed users: %v", err)
		}
		for _, u := range users {
			ids = append(ids, int32(u.ID))
		}
	}
	return ids
}

// A group never exceeds chat.MaxGroupSize, however many admins add
// members at once, on however many instances.
func TestChatService_MemberLimitUnderConcurrency(t *testing.T) {
	// On FerretDB 1.x the eleven writers queue on the chat's lock, whose
	// 5 s wait a loaded machine can exceed.
	servertest.SkipOnEmbeddedMongo(t)
	srv1, srv2 := twoInstances(t)
	admin := newUser(t, srv1, servertest.Protocols[0])
	const start, adders, each = 400, 11, 20
	ids := seedUsers(t, srv1, start-1+adders*each)
	res, err := admin.chats.CreateGroupChat(context.Background(), req(admin, &parleyv1.CreateGroupChatRequest{
		Name: "big", MemberIds: ids[:start-1],
	}))
	if err != nil {
		t.Fatalf("CreateGroupChat: %v", err)
	}
	chatID := res.Msg.GetChat().GetId()
	rest := ids[start-1:]
	admin2 := &user{id: admin.id, token: admin.token,
		chats: servertest.Client(srv2, servertest.Protocols[1], parleyv1connect.NewChatServiceClient)}

	var wg sync.WaitGroup
	errs := make([]error, adders)
	for i := range adders {
		u := admin
		if i%2 == 1 {
			u = admin2
		}
		wg.Go(func() {
			_, errs[i] = u.chats.AddParticipants(context.Background(), req(u, &parleyv1.AddParticipantsRequest{
				ChatId: chatID, UserIds: rest[i*each : (i+1)*each],
			}))
		})
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch connect.CodeOf(err) {
		case connect.CodeUnknown:
			if err != nil {
				t.Errorf("adder %d: %v", i, err)
			}
			ok++
		case connect.CodeFailedPrecondition:
		default:
			t.Errorf("adder %d: %v, want success or failed_precondition", i, err)
		}
	}
	got := len(getChat(t, admin, chatID).GetParticipants())
	if got > chat.MaxGroupSize {
		t.Fatalf("the group has %d members, more than %d", got, chat.MaxGroupSize)
	}
	if want := start + ok*each; got != want {
		t.Errorf("the group has %d members after %d successful adds of %d to %d; want %d", got, ok, each, start, want)
	}
	if want := (chat.MaxGroupSize - start) / each; ok != want {
		t.Errorf("%d adds succeeded; want %d (as many as fit)", ok, want)
	}
}

// Two admins demoting each other at once: one wins, the group keeps an
// admin, and the other is refused.
func TestChatService_AdminsDemoteEachOther(t *testing.T) {
	srv1, srv2 := twoInstances(t)
	for i := range raceRounds {
		a := newUser(t, srv1, servertest.Protocols[0])
		b := newUser(t, srv2, servertest.Protocols[1])
		c := groupOfAdmins(t, a, b)
		var wg sync.WaitGroup
		var errA, errB error
		wg.Go(func() {
			_, errA = a.chats.SetParticipantRole(context.Background(), req(a, &parleyv1.SetParticipantRoleRequest{
				ChatId: c.GetId(), UserId: b.id, Role: parleyv1.Role_ROLE_MEMBER,
			}))
		})
		wg.Go(func() {
			_, errB = b.chats.SetParticipantRole(context.Background(), req(b, &parleyv1.SetParticipantRoleRequest{
				ChatId: c.GetId(), UserId: a.id, Role: parleyv1.Role_ROLE_MEMBER,
			}))
		})
		wg.Wait()
		if (errA == nil) == (errB == nil) {
			t.Fatalf("round %d: a's demotion of b: %v; b's of a: %v; want exactly one to succeed", i, errA, errB)
		}
		for _, err := range []error{errA, errB} {
			if err != nil && connect.CodeOf(err) != connect.CodePermissionDenied {
				t.Errorf("round %d: the loser got %v; want permission_denied (it is no admin any more)", i, err)
			}
		}
		if admins := countAdmins(t, a, c.GetId()); admins != 1 {
			t.Fatalf("round %d: %d admins after the race; want 1", i, admins)
		}
	}
}

// Two admins leaving at once: the group keeps an admin.
func TestChatService_AdminsLeaveTogether(t *testing.T) {
	srv1, srv2 := twoInstances(t)
	for i := range raceRounds {
		a := newUser(t, srv1, servertest.Protocols[0])
		b := newUser(t, srv2, servertest.Protocols[1])
		m := newUser(t, srv1, servertest.Protocols[0])
		c := groupOfAdmins(t, a, b, m)
		var wg sync.WaitGroup
		var errA, errB error
		wg.Go(func() {
			_, errA = a.chats.LeaveChat(context.Background(), req(a, &parleyv1.LeaveChatRequest{ChatId: c.GetId()}))
		})
		wg.Go(func() {
			_, errB = b.chats.LeaveChat(context.Background(), req(b, &parleyv1.LeaveChatRequest{ChatId: c.GetId()}))
		})
		wg.Wait()
		if errA != nil && errB != nil {
			t.Fatalf("round %d: both admins were refused: %v; %v", i, errA, errB)
		}
		if admins := countAdmins(t, m, c.GetId()); admins != 1 {
			t.Fatalf("round %d: %d admins after both tried to leave (a: %v, b: %v); want 1", i, admins, errA, errB)
		}
	}
}

// groupOfAdmins creates a group of a (its admin), b, made admin too, and
// others as members.
func groupOfAdmins(t *testing.T, a, b *user, others ...*user) *parleyv1.Chat {
	t.Helper()
	c := group(t, a, "g", append([]*user{b}, others...)...)
	if _, err := a.chats.SetParticipantRole(context.Background(), req(a, &parleyv1.SetParticipantRoleRequest{
		ChatId: c.GetId(), UserId: b.id, Role: parleyv1.Role_ROLE_ADMIN,
	})); err != nil {
		t.Fatal(err)
	}
	return c
}

// countAdmins returns how many admins the chat has, as u sees it.
func countAdmins(t *testing.T, u *user, chatID string) int {
	t.Helper()
	n := 0
	for _, r := range roles(getChat(t, u, chatID)) {
		if r == parleyv1.Role_ROLE_ADMIN {
			n++
		}
	}
	return n
}
