package chat_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

// storeCallsFile holds the store calls per send that
// TestSendMessage_StoreCalls holds the server to; see bench/README.md.
var storeCallsFile = filepath.Join("..", "..", "bench", "store-calls.json")

// perSend is what one send costs in store calls, averaged over the
// sends of a scenario.
type perSend struct {
	Mongo           map[string]float64 `json:"mongo"`
	MongoTotal      float64            `json:"mongoTotal"`
	RedisRoundTrips float64            `json:"redisRoundTrips"`
	Redis           map[string]float64 `json:"redis"`
	RedisTotal      float64            `json:"redisTotal"`
	RedisLocks      float64            `json:"redisLocks"`
	SQL             float64            `json:"sql"`
}

func average(c servertest.Calls, n int) perSend {
	per := func(v int) float64 { return math.Round(float64(v)*100/float64(n)) / 100 }
	p := perSend{Mongo: map[string]float64{}, Redis: map[string]float64{},
		MongoTotal: per(c.MongoTotal()), RedisRoundTrips: per(c.RedisRoundTrips),
		RedisTotal: per(c.RedisTotal()), RedisLocks: per(c.RedisLocks), SQL: per(c.SQL)}
	for k, v := range c.Mongo {
		p.Mongo[k] = per(v)
	}
	for k, v := range c.RedisCommands {
		p.Redis[k] = per(v)
	}
	return p
}

// TestSendMessage_StoreCalls counts the store calls of SendMessage, on the
// document engine, in the scenarios of the load tool's W1 (a private chat)
// and W2 (a group; its subscribers make no store call per event), and
// holds them to the numbers committed in bench/store-calls.json: more
// calls is a regression, fewer means the file should say so. The counts
// are deterministic: sends one after another, a clock that stands still
// (no session touch), scripts and connections warmed up first.
// PARLEY_UPDATE_STORE_CALLS=1 writes the measured numbers to the file.
func TestSendMessage_StoreCalls(t *testing.T) {
	if os.Getenv("PARLEY_TEST_MONGO_URI") == "" {
		t.Skip("counts the document engine's path: set PARLEY_TEST_MONGO_URI (FerretDB 1.x takes the locked path)")
	}
	servertest.SkipOnRedisCluster(t, "the committed counts are one Redis's; on a cluster a send releases its seq in a round trip of its own, before the event (live.Hub.PublishWith)")
	const sends = 20
	calls := &servertest.StoreCalls{}
	clock := servertest.NewClock()
	srv := servertest.New(t, servertest.WithStoreCalls(calls), servertest.WithConfig(func(c *app.Config) { c.Now = clock.Now }))
	p := servertest.Protocols[0]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	private := servertest.PrivateChat(t, alice.chats, alice.token, bob.id).GetId()
	servertest.AcceptRequest(t, bob.chats, bob.token, private)
	members := []*user{bob}
	for range 8 {
		members = append(members, newUser(t, srv, p))
	}
	groupID := group(t, alice, "counted", members...).GetId()

	got := map[string]perSend{}
	for _, sc := range []struct {
		name   string
		chatID string
	}{
		{"SendMessage, private chat (W1)", private},
		{fmt.Sprintf("SendMessage, group of %d (W2)", len(members)+1), groupID},
	} {
		for range 3 { // warm-up: scripts loaded, pools dialed
			servertest.Send(t, alice.msgs, alice.token, sc.chatID, "warm-up")
		}
		calls.Reset()
		for range sends {
			servertest.Send(t, alice.msgs, alice.token, sc.chatID, "counted")
		}
		c := calls.Of(parleyv1connect.MessageServiceSendMessageProcedure)
		if c.Requests != sends {
			t.Fatalf("%s: counted %d requests, want %d", sc.name, c.Requests, sends)
		}
		got[sc.name] = average(c, sends)
	}

	if os.Getenv("PARLEY_UPDATE_STORE_CALLS") != "" {
		data, _ := json.MarshalIndent(got, "", "  ")
		if err := os.WriteFile(storeCallsFile, append(data, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", storeCallsFile)
		return
	}
	data, err := os.ReadFile(storeCallsFile)
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]perSend
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatalf("%s: %v", storeCallsFile, err)
	}
	for name, m := range got {
		if w, ok := want[name]; !ok || !reflect.DeepEqual(w, m) {
			wj, _ := json.Marshal(w)
			mj, _ := json.Marshal(m)
			t.Errorf("%s: store calls per send differ from %s; if the change is meant, run this test with "+
				"PARLEY_UPDATE_STORE_CALLS=1 and commit the file\ncommitted: %s\nmeasured:  %s", name, storeCallsFile, wj, mj)
		}
	}
	if len(want) != len(got) {
		t.Errorf("%s has %d scenarios, the test measures %d", storeCallsFile, len(want), len(got))
	}
}

// TestAddParticipants_StoreCallsDoNotGrow: adding 20 members to a group
// with history makes as many document commands as adding 2 (their
// positions start in one command), and the history counts as read for
// each of them.
func TestAddParticipants_StoreCallsDoNotGrow(t *testing.T) {
	if os.Getenv("PARLEY_TEST_MONGO_URI") == "" {
		t.Skip("counts the document engine's path: set PARLEY_TEST_MONGO_URI (FerretDB 1.x takes the locked path)")
	}
	calls := &servertest.StoreCalls{}
	srv := servertest.New(t, servertest.WithStoreCalls(calls))
	p := servertest.Protocols[0]
	admin := newUser(t, srv, p)
	commands := map[int]int{}
	for _, n := range []int{2, 20} {
		g := group(t, admin, "history").GetId()
		for i := range 3 {
			send(t, admin, g, fmt.Sprint("before ", i))
		}
		added := make([]*user, n)
		ids := make([]int32, n)
		for i := range added {
			added[i] = newUser(t, srv, p)
			ids[i] = added[i].id
		}
		calls.Reset()
		if _, err := admin.chats.AddParticipants(context.Background(), req(admin, &parleyv1.AddParticipantsRequest{ChatId: g, UserIds: ids})); err != nil {
			t.Fatal(err)
		}
		commands[n] = calls.Of(parleyv1connect.ChatServiceAddParticipantsProcedure).MongoTotal()
		for _, u := range added {
			if got := getChat(t, u, g).GetUnreadCount(); got != 0 {
				t.Errorf("a member added after 3 messages has %d unread, want 0", got)
			}
		}
	}
	if commands[20] != commands[2] {
		t.Errorf("AddParticipants made %d document commands for 2 members and %d for 20; want as many", commands[2], commands[20])
	}
}
