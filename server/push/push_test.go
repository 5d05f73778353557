package push_test

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/push"
	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

var twoProtocols = []servertest.Protocol{servertest.Protocols[0], servertest.Protocols[1]}

// testWindow is the collapse window of the tests' servers: short, so
// that a test waits little for a window's end, and long enough that a
// burst of sends falls in one.
const testWindow = 1500 * time.Millisecond

// pushEnv is a server with push on, and the push service its devices
// subscribe at.
type pushEnv struct {
	srv *servertest.Server
	ps  *pushService
	p   servertest.Protocol
	cfg func(*app.Config)
}

// config sets up a server's push delivery for tests: its own Redis
// prefix (so its queue is its own), a VAPID key in keyDir, one worker
// (jobs are done in the order they came), short waits.
func config(t testing.TB, keyDir string, prefix string, workers int) func(*app.Config) {
	keyFile := filepath.Join(keyDir, "vapid.pem")
	if _, err := push.LoadOrCreateVAPIDKey(keyFile, true); err != nil {
		t.Fatal(err)
	}
	return func(c *app.Config) {
		c.RedisPrefix = prefix
		c.VAPIDKeyFile = keyFile
		c.VAPIDSubject = "mailto:ops@parley.example"
		c.Push = push.Config{
			InsecureEndpoints: true,
			Window:            testWindow,
			Workers:           workers,
			Poll:              20 * time.Millisecond,
			RetryBase:         50 * time.Millisecond,
			MaxBackoff:        200 * time.Millisecond,
		}
	}
}

func newEnv(t *testing.T, p servertest.Protocol) *pushEnv {
	t.Helper()
	prefix := servertest.SharedStores(t).RedisPrefix + servertest.UniqueName("push") + ":"
	cfg := config(t, t.TempDir(), prefix, 1)
	srv := servertest.New(t, servertest.WithConfig(cfg))
	e := &pushEnv{srv: srv, p: p, cfg: cfg}
	e.ps = newPushService(t, vapidKey(t, srv, p))
	return e
}

// vapidKey asks the server for its VAPID key, without signing in.
func vapidKey(t testing.TB, srv *servertest.Server, p servertest.Protocol) string {
	t.Helper()
	c := servertest.Client(srv, p, parleyv1connect.NewPushServiceClient)
	res, err := c.GetVapidPublicKey(context.Background(), connect.NewRequest(&parleyv1.GetVapidPublicKeyRequest{}))
	if err != nil {
		t.Fatalf("GetVapidPublicKey: %v", err)
	}
	return res.Msg.GetPublicKey()
}

// member is a signed-in user with its clients.
type member struct {
	id       int32
	name     string
	token    string
	auth     parleyv1connect.AuthServiceClient
	chats    parleyv1connect.ChatServiceClient
	msgs     parleyv1connect.MessageServiceClient
	push     parleyv1connect.PushServiceClient
	live     parleyv1connect.LiveServiceClient
	srv      *servertest.Server
	protocol servertest.Protocol
}

func (e *pushEnv) member(t testing.TB) *member {
	t.Helper()
	return newMember(t, e.srv, e.p, "")
}

func newMember(t testing.TB, srv *servertest.Server, p servertest.Protocol, name string) *member {
	t.Helper()
	a := servertest.Client(srv, p, parleyv1connect.NewAuthServiceClient)
	if name == "" {
		name = servertest.UniqueName("pu")
	}
	acc := servertest.Register(t, a, name)
	return withClients(srv, p, &member{id: acc.ID, name: name, token: acc.Token})
}

func withClients(srv *servertest.Server, p servertest.Protocol, m *member) *member {
	m.auth = servertest.Client(srv, p, parleyv1connect.NewAuthServiceClient)
	m.chats = servertest.Client(srv, p, parleyv1connect.NewChatServiceClient)
	m.msgs = servertest.Client(srv, p, parleyv1connect.NewMessageServiceClient)
	m.push = servertest.Client(srv, p, parleyv1connect.NewPushServiceClient)
	m.live = servertest.Client(srv, p, parleyv1connect.NewLiveServiceClient)
	m.srv, m.protocol = srv, p
	return m
}

func req[T any](m *member, msg *T) *connect.Request[T] { return servertest.WithToken(msg, m.token) }

// subscribe registers the device for m's session.
func (m *member) subscribe(t testing.TB, d *device, always bool) *parleyv1.PushSubscription {
	t.Helper()
	res, err := m.push.RegisterPushSubscription(context.Background(), req(m, &parleyv1.RegisterPushSubscriptionRequest{
		Endpoint: d.endpoint, P256Dh: d.p256dh(), Auth: d.auth(), Always: always,
	}))
	if err != nil {
		t.Fatalf("RegisterPushSubscription: %v", err)
	}
	return res.Msg.GetSubscription()
}

func (m *member) subscriptions(t testing.TB) []string {
	t.Helper()
	res, err := m.push.ListPushSubscriptions(context.Background(), req(m, &parleyv1.ListPushSubscriptionsRequest{}))
	if err != nil {
		t.Fatalf("ListPushSubscriptions: %v", err)
	}
	var ids []string
	for _, s := range res.Msg.GetSubscriptions() {
		ids = append(ids, s.GetId())
	}
	return ids
}

func (m *member) group(t testing.TB, name string, others ...*member) *parleyv1.Chat {
	t.Helper()
	var ids []int32
	for _, o := range others {
		ids = append(ids, o.id)
	}
	return servertest.GroupChat(t, m.chats, m.token, name, ids...)
}

func (m *member) send(t testing.TB, chatID, text string) *parleyv1.Message {
	t.Helper()
	return servertest.Send(t, m.msgs, m.token, chatID, text)
}

// online opens a live stream for m and waits until it is live; the
// stream ends with the test.
func (m *member) online(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := m.live.Subscribe(ctx, req(m, &parleyv1.SubscribeRequest{}))
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	for s.Receive() {
		if s.Msg().GetEvent().GetReady() != nil {
			return
		}
	}
	t.Fatalf("live stream ended before Ready: %v", s.Err())
}

// barrier makes sure the server's one worker has done every job queued
// so far: it sends a message to a member of its own, whose device's push
// comes after them.
type barrier struct {
	sender, to *member
	dev        *device
}

func (e *pushEnv) barrier(t testing.TB) *barrier {
	b := &barrier{sender: e.member(t), to: e.member(t), dev: e.ps.newDevice()}
	b.to.subscribe(t, b.dev, false)
	return b
}

func (b *barrier) wait(t testing.TB) {
	t.Helper()
	// A new chat each time: pushes to one chat collapse.
	c := b.sender.group(t, "barrier", b.to)
	m := b.sender.send(t, c.GetId(), "barrier")
	if got := b.dev.next(t).Payload; got.ChatID != c.GetId() || got.Seq != m.GetSeq() {
		t.Fatalf("barrier push %+v, want chat %s seq %d", got, c.GetId(), m.GetSeq())
	}
}

func TestPushService_Subscriptions(t *testing.T) {
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			e := newEnv(t, p)
			ctx := context.Background()
			me, other := e.member(t), e.member(t)
			d1, d2 := e.ps.newDevice(), e.ps.newDevice()

			t.Run("vapid key is public and stable", func(t *testing.T) {
				k := vapidKey(t, e.srv, p)
				if len(k) != 87 || k != e.ps.vapidKey {
					t.Fatalf("key %q (%d characters), want the same 87 as before", k, len(k))
				}
			})
			t.Run("register and list", func(t *testing.T) {
				s1 := me.subscribe(t, d1, false)
				if !s1.GetCurrentSession() || s1.GetEndpoint() != d1.endpoint || s1.GetAlways() {
					t.Fatalf("registered %+v", s1)
				}
				again := me.subscribe(t, d1, true)
				if again.GetId() != s1.GetId() || !again.GetAlways() {
					t.Fatalf("registered the endpoint again: %+v, want id %s with always", again, s1.GetId())
				}
				s2 := me.subscribe(t, d2, false)
				// Registered in the same millisecond, the two may list in either order.
				got, want := me.subscriptions(t), []string{s1.GetId(), s2.GetId()}
				slices.Sort(got)
				slices.Sort(want)
				if !slices.Equal(got, want) {
					t.Fatalf("subscriptions %v, want %v", got, want)
				}
				if got := other.subscriptions(t); len(got) != 0 {
					t.Fatalf("another user lists %v", got)
				}
			})
			t.Run("bad input", func(t *testing.T) {
				for name, r := range map[string]*parleyv1.RegisterPushSubscriptionRequest{
					"ftp endpoint":   {Endpoint: "ftp://push.example/x", P256Dh: d1.p256dh(), Auth: d1.auth()},
					"no endpoint":    {P256Dh: d1.p256dh(), Auth: d1.auth()},
					"long endpoint":  {Endpoint: "https://push.example/" + strings.Repeat("a", 2048), P256Dh: d1.p256dh(), Auth: d1.auth()},
					"not a point":    {Endpoint: "https://push.example/x", P256Dh: strings.Repeat("A", 87), Auth: d1.auth()},
					"short p256dh":   {Endpoint: "https://push.example/x", P256Dh: d1.p256dh()[:40], Auth: d1.auth()},
					"not base64 key": {Endpoint: "https://push.example/x", P256Dh: d1.p256dh(), Auth: strings.Repeat("!", 22)},
				} {
					_, err := me.push.RegisterPushSubscription(ctx, req(me, r))
					if connect.CodeOf(err) != connect.CodeInvalidArgument {
						t.Errorf("%s: err %v, want invalid_argument", name, err)
					}
				}
				if got := me.subscriptions(t); len(got) != 2 {
					t.Fatalf("after bad input, %d subscriptions, want 2", len(got))
				}
				_, err := me.push.RegisterPushSubscription(ctx, servertest.WithToken(&parleyv1.RegisterPushSubscriptionRequest{
					Endpoint: d1.endpoint, P256Dh: d1.p256dh(), Auth: d1.auth(),
				}, ""))
				servertest.WantCode(t, err, connect.CodeUnauthenticated)
			})
			t.Run("unregister", func(t *testing.T) {
				ids := me.subscriptions(t)
				_, err := other.push.UnregisterPushSubscription(ctx, req(other, &parleyv1.UnregisterPushSubscriptionRequest{Id: ids[0]}))
				servertest.WantCode(t, err, connect.CodeNotFound)
				if _, err := me.push.UnregisterPushSubscription(ctx, req(me, &parleyv1.UnregisterPushSubscriptionRequest{Id: ids[0]})); err != nil {
					t.Fatalf("UnregisterPushSubscription: %v", err)
				}
				if got := me.subscriptions(t); !slices.Equal(got, ids[1:]) {
					t.Fatalf("subscriptions %v, want %v", got, ids[1:])
				}
				_, err = me.push.UnregisterPushSubscription(ctx, req(me, &parleyv1.UnregisterPushSubscriptionRequest{Id: ids[0]}))
				servertest.WantCode(t, err, connect.CodeNotFound)
			})
			t.Run("at most MaxSubscriptions", func(t *testing.T) {
				u := e.member(t)
				for range push.MaxSubscriptions {
					u.subscribe(t, e.ps.newDevice(), false)
				}
				d := e.ps.newDevice()
				_, err := u.push.RegisterPushSubscription(ctx, req(u, &parleyv1.RegisterPushSubscriptionRequest{
					Endpoint: d.endpoint, P256Dh: d.p256dh(), Auth: d.auth(),
				}))
				servertest.WantCode(t, err, connect.CodeResourceExhausted)
			})
			t.Run("settings", func(t *testing.T) {
				res, err := me.push.GetPushSettings(ctx, req(me, &parleyv1.GetPushSettingsRequest{}))
				if err != nil || !res.Msg.GetSettings().GetShowPreviews() {
					t.Fatalf("GetPushSettings = %v, %v; want previews on by default", res, err)
				}
				off := false
				up, err := me.push.UpdatePushSettings(ctx, req(me, &parleyv1.UpdatePushSettingsRequest{ShowPreviews: &off}))
				if err != nil || up.Msg.GetSettings().GetShowPreviews() {
					t.Fatalf("UpdatePushSettings = %v, %v; want previews off", up, err)
				}
				res, err = me.push.GetPushSettings(ctx, req(me, &parleyv1.GetPushSettingsRequest{}))
				if err != nil || res.Msg.GetSettings().GetShowPreviews() {
					t.Fatalf("GetPushSettings = %v, %v; want previews off", res, err)
				}
				res, err = other.push.GetPushSettings(ctx, req(other, &parleyv1.GetPushSettingsRequest{}))
				if err != nil || !res.Msg.GetSettings().GetShowPreviews() {
					t.Fatalf("another user's GetPushSettings = %v, %v; want previews on", res, err)
				}
			})
		})
	}
}

func TestPushService_HTTPSOnly(t *testing.T) {
	srv := servertest.New(t)
	me := newMember(t, srv, servertest.Protocols[0], "")
	ps := newPushService(t, vapidKey(t, srv, servertest.Protocols[0]))
	d := ps.newDevice()
	_, err := me.push.RegisterPushSubscription(context.Background(), req(me, &parleyv1.RegisterPushSubscriptionRequest{
		Endpoint: d.endpoint, P256Dh: d.p256dh(), Auth: d.auth(),
	}))
	servertest.WantCode(t, err, connect.CodeInvalidArgument)
	// Nor https on the server's own network.
	https := strings.Replace(d.endpoint, "http://", "https://", 1)
	_, err = me.push.RegisterPushSubscription(context.Background(), req(me, &parleyv1.RegisterPushSubscriptionRequest{
		Endpoint: https, P256Dh: d.p256dh(), Auth: d.auth(),
	}))
	servertest.WantCode(t, err, connect.CodeInvalidArgument)
	if _, err := me.push.RegisterPushSubscription(context.Background(), req(me, &parleyv1.RegisterPushSubscriptionRequest{
		Endpoint: "https://push.example/send/1", P256Dh: d.p256dh(), Auth: d.auth(),
	})); err != nil {
		t.Fatalf("RegisterPushSubscription(https): %v", err)
	}
}

func TestPush_Delivery(t *testing.T) {
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			e := newEnv(t, p)
			ctx := context.Background()
			b := e.barrier(t)
			sender := e.member(t)

			t.Run("offline member gets the message with a preview", func(t *testing.T) {
				r := e.member(t)
				d := e.ps.newDevice()
				r.subscribe(t, d, false)
				c := sender.group(t, "Trip", r)
				text := strings.Repeat("long text ", 30)
				m := sender.send(t, c.GetId(), text)
				got := d.next(t)
				want := push.Payload{
					Kind: push.KindMessage, ChatID: c.GetId(), ChatType: "group", ChatTitle: "Trip",
					SenderID: int(sender.id), SenderName: sender.name, Seq: m.GetSeq(), MessageID: m.GetId(),
					Preview: string([]rune(text)[:push.PreviewRunes-1]) + "…",
				}
				if got.Payload != want {
					t.Fatalf("push %+v, want %+v", got.Payload, want)
				}
				if got.Topic != c.GetId() || got.Urgency != "normal" || got.TTL != 86400 {
					t.Fatalf("topic %q urgency %q TTL %d, want %q normal 86400", got.Topic, got.Urgency, got.TTL, c.GetId())
				}
			})
			t.Run("private chat, mention and reaction", func(t *testing.T) {
				r := e.member(t)
				d, ds := e.ps.newDevice(), e.ps.newDevice()
				r.subscribe(t, d, false)
				sender2 := e.member(t)
				sender2.subscribe(t, ds, false)
				pc := servertest.PrivateChat(t, sender2.chats, sender2.token, r.id)
				m := sender2.send(t, pc.GetId(), "hi")
				if got := d.next(t).Payload; got.ChatType != "private" || got.ChatTitle != sender2.name || got.Kind != push.KindMessage {
					t.Fatalf("private push %+v, want type private titled %q", got, sender2.name)
				}
				g := sender.group(t, "Mentions", r, sender2)
				res, err := sender.msgs.SendMessage(ctx, req(sender, &parleyv1.SendMessageRequest{
					ChatId: g.GetId(), ClientMessageId: servertest.UniqueName("c"), Text: "look", MentionUserIds: []int32{r.id},
				}))
				if err != nil {
					t.Fatalf("SendMessage: %v", err)
				}
				got := d.next(t)
				if got.Payload.Kind != push.KindMention || got.Payload.Seq != res.Msg.GetMessage().GetSeq() || got.Urgency != "high" {
					t.Fatalf("push to the mentioned %+v (urgency %s), want a mention of seq %d, urgency high", got.Payload, got.Urgency, res.Msg.GetMessage().GetSeq())
				}
				if got := ds.next(t).Payload; got.Kind != push.KindMessage || got.ChatID != g.GetId() {
					t.Fatalf("push to the other member %+v, want a message", got)
				}
				// A reaction to the message pushes to its sender alone.
				if _, err := r.msgs.AddReaction(ctx, req(r, &parleyv1.AddReactionRequest{ChatId: pc.GetId(), MessageId: m.GetId(), Emoji: "👍"})); err != nil {
					t.Fatalf("AddReaction: %v", err)
				}
				rx := ds.next(t)
				if rx.Payload.Kind != push.KindReaction || rx.Payload.Emoji != "👍" || rx.Payload.SenderID != int(r.id) || rx.Payload.Seq != m.GetSeq() || rx.TTL != 3600 {
					t.Fatalf("reaction push %+v (TTL %d), want 👍 by %d on seq %d", rx.Payload, rx.TTL, r.id, m.GetSeq())
				}
				if rx.Topic != "r"+pc.GetId() {
					t.Fatalf("reaction push topic %q, want %q", rx.Topic, "r"+pc.GetId())
				}
				b.wait(t)
				d.none(t) // the reactor
			})
			t.Run("online member gets none unless always", func(t *testing.T) {
				r := e.member(t)
				quiet, always := e.ps.newDevice(), e.ps.newDevice()
				r.subscribe(t, quiet, false)
				r.subscribe(t, always, true)
				r.online(t)
				c := sender.group(t, "Online", r)
				m := sender.send(t, c.GetId(), "you are here")
				if got := always.next(t).Payload; got.Seq != m.GetSeq() {
					t.Fatalf("push %+v, want seq %d", got, m.GetSeq())
				}
				b.wait(t)
				quiet.none(t)
			})
			t.Run("mute suppresses", func(t *testing.T) {
				r := e.member(t)
				d := e.ps.newDevice()
				r.subscribe(t, d, false)
				c := sender.group(t, "Muted", r)
				if _, err := r.chats.UpdateChatSettings(ctx, req(r, &parleyv1.UpdateChatSettingsRequest{
					ChatId: c.GetId(), Mute: &parleyv1.UpdateChatSettingsRequest_Muted{Muted: true},
				})); err != nil {
					t.Fatalf("UpdateChatSettings: %v", err)
				}
				sender.send(t, c.GetId(), "shh")
				b.wait(t)
				d.none(t)
			})
			t.Run("previews off", func(t *testing.T) {
				r := e.member(t)
				d := e.ps.newDevice()
				r.subscribe(t, d, false)
				off := false
				if _, err := r.push.UpdatePushSettings(ctx, req(r, &parleyv1.UpdatePushSettingsRequest{ShowPreviews: &off})); err != nil {
					t.Fatalf("UpdatePushSettings: %v", err)
				}
				c := sender.group(t, "Secret", r)
				m := sender.send(t, c.GetId(), "the secret")
				got := d.next(t).Payload
				if got.Preview != "" || got.Seq != m.GetSeq() || got.SenderName != sender.name || got.ChatTitle != "Secret" {
					t.Fatalf("push %+v, want seq %d from %s without a preview", got, m.GetSeq(), sender.name)
				}
			})
			t.Run("a burst collapses", func(t *testing.T) {
				r := e.member(t)
				d := e.ps.newDevice()
				r.subscribe(t, d, false)
				c := sender.group(t, "Burst", r)
				var sent []*parleyv1.Message
				for i := range 4 {
					sent = append(sent, sender.send(t, c.GetId(), "burst "+string(rune('a'+i))))
				}
				if got := d.next(t).Payload; got.Seq != sent[0].GetSeq() {
					t.Fatalf("first push %+v, want seq %d", got, sent[0].GetSeq())
				}
				// One more, at the window's end, with the latest.
				if got := d.next(t).Payload; got.Seq != sent[3].GetSeq() || got.Preview != "burst d" {
					t.Fatalf("second push %+v, want the latest, seq %d", got, sent[3].GetSeq())
				}
				// That push opened the next window: a message now comes
				// at its end, and nothing came between.
				later := sender.send(t, c.GetId(), "later")
				if got := d.next(t).Payload; got.Seq != later.GetSeq() {
					t.Fatalf("third push %+v, want seq %d", got, later.GetSeq())
				}
			})
			t.Run("a mention is not collapsed into messages", func(t *testing.T) {
				r := e.member(t)
				d := e.ps.newDevice()
				r.subscribe(t, d, false)
				c := sender.group(t, "Mention in a burst", r)
				first := sender.send(t, c.GetId(), "first")
				res, err := sender.msgs.SendMessage(ctx, req(sender, &parleyv1.SendMessageRequest{
					ChatId: c.GetId(), ClientMessageId: servertest.UniqueName("c"), Text: "look", MentionUserIds: []int32{r.id},
				}))
				if err != nil {
					t.Fatalf("SendMessage: %v", err)
				}
				mention := res.Msg.GetMessage()
				last := sender.send(t, c.GetId(), "last")
				for _, want := range []struct {
					seq         int64
					kind, topic string
				}{
					{first.GetSeq(), push.KindMessage, c.GetId()},
					{mention.GetSeq(), push.KindMention, "m" + c.GetId()},
					// At the message window's end, its latest.
					{last.GetSeq(), push.KindMessage, c.GetId()},
				} {
					got := d.next(t)
					if got.Payload.Seq != want.seq || got.Payload.Kind != want.kind || got.Topic != want.topic {
						t.Fatalf("push %+v (topic %q), want a %s of seq %d with topic %q", got.Payload, got.Topic, want.kind, want.seq, want.topic)
					}
				}
			})
			t.Run("gone removes the subscription", func(t *testing.T) {
				r := e.member(t)
				d, kept := e.ps.newDevice(), e.ps.newDevice()
				sub := r.subscribe(t, d, false)
				keptSub := r.subscribe(t, kept, false)
				d.answer(http.StatusGone)
				c := sender.group(t, "Gone", r)
				sender.send(t, c.GetId(), "anyone?")
				kept.next(t)
				b.wait(t)
				if got := d.triesSoFar(); got != 1 {
					t.Fatalf("%d tries, want 1", got)
				}
				if got := r.subscriptions(t); !slices.Equal(got, []string{keptSub.GetId()}) {
					t.Fatalf("subscriptions %v, want only %s (not %s)", got, keptSub.GetId(), sub.GetId())
				}
			})
			t.Run("server errors are retried", func(t *testing.T) {
				r := e.member(t)
				d := e.ps.newDevice()
				r.subscribe(t, d, false)
				d.answer(http.StatusServiceUnavailable, http.StatusInternalServerError, http.StatusTooManyRequests)
				c := sender.group(t, "Retry", r)
				m := sender.send(t, c.GetId(), "again")
				if got := d.next(t).Payload; got.Seq != m.GetSeq() || got.Preview != "again" {
					t.Fatalf("push %+v, want seq %d", got, m.GetSeq())
				}
				if got := d.triesSoFar(); got != 4 {
					t.Fatalf("%d tries, want 4", got)
				}
			})
			t.Run("logout ends the subscription", func(t *testing.T) {
				r := e.member(t)
				res, err := r.auth.Login(ctx, connect.NewRequest(&parleyv1.LoginRequest{Login: r.name, Password: servertest.Password}))
				if err != nil {
					t.Fatalf("Login: %v", err)
				}
				phone := withClients(e.srv, p, &member{id: r.id, name: r.name, token: res.Msg.GetTokens().GetAccessToken()})
				d, kept := e.ps.newDevice(), e.ps.newDevice()
				phone.subscribe(t, d, false)
				keptSub := r.subscribe(t, kept, false)
				if _, err := phone.auth.Logout(ctx, req(phone, &parleyv1.LogoutRequest{})); err != nil {
					t.Fatalf("Logout: %v", err)
				}
				if got := r.subscriptions(t); !slices.Equal(got, []string{keptSub.GetId()}) {
					t.Fatalf("subscriptions after logout %v, want %s alone", got, keptSub.GetId())
				}
				c := sender.group(t, "Logout", r)
				sender.send(t, c.GetId(), "bye")
				kept.next(t)
				b.wait(t)
				d.none(t)
			})
		})
	}
}

// A job queued while no worker runs is delivered by a server started
// later on the same stores.
func TestPush_QueueSurvivesRestart(t *testing.T) {
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			prefix := servertest.SharedStores(t).RedisPrefix + servertest.UniqueName("push") + ":"
			keys := t.TempDir()
			first := servertest.New(t, servertest.WithConfig(config(t, keys, prefix, -1)))
			ps := newPushService(t, vapidKey(t, first, p))
			sender, r := newMember(t, first, p, ""), newMember(t, first, p, "")
			d := ps.newDevice()
			r.subscribe(t, d, false)
			c := sender.group(t, "Restart", r)
			m := sender.send(t, c.GetId(), "while down")
			if err := first.Stop(); err != nil {
				t.Fatalf("stop: %v", err)
			}
			d.none(t)

			second := servertest.New(t, servertest.WithConfig(config(t, keys, prefix, 1)))
			if k := vapidKey(t, second, p); k != ps.vapidKey {
				t.Fatalf("the second server's VAPID key %q, want the first's %q", k, ps.vapidKey)
			}
			if got := d.next(t).Payload; got.Seq != m.GetSeq() || got.ChatID != c.GetId() || got.Preview != "while down" {
				t.Fatalf("push %+v, want seq %d of %s", got, m.GetSeq(), c.GetId())
			}
		})
	}
}

// A job that a worker took and never finished (its instance died) is
// taken over by another instance's worker.
func TestPush_DeadWorkersJobsAreTakenOver(t *testing.T) {
	p := servertest.Protocols[0]
	prefix := servertest.SharedStores(t).RedisPrefix + servertest.UniqueName("push") + ":"
	keys := t.TempDir()
	first := servertest.New(t, servertest.WithConfig(config(t, keys, prefix, -1)))
	ps := newPushService(t, vapidKey(t, first, p))
	sender, r := newMember(t, first, p, ""), newMember(t, first, p, "")
	d := ps.newDevice()
	r.subscribe(t, d, false)
	c := sender.group(t, "Taken", r)
	m := sender.send(t, c.GetId(), "taken over")
	// A worker of the consumer group takes the job, then dies.
	ctx := context.Background()
	jobs := prefix + "{pushq}:jobs"
	rdb := first.App.Redis()
	if err := rdb.XGroupCreateMkStream(ctx, jobs, "push", "0").Err(); err != nil {
		t.Fatalf("create the group: %v", err)
	}
	res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "push", Consumer: "dead", Streams: []string{jobs, ">"}, Count: 10}).Result()
	if err != nil || len(res) != 1 || len(res[0].Messages) != 1 {
		t.Fatalf("the dead worker's read: %v, %v; want one job", res, err)
	}
	if err := first.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	servertest.New(t, servertest.WithConfig(func(c *app.Config) {
		config(t, keys, prefix, 1)(c)
		c.Push.ClaimAfter = 200 * time.Millisecond
	}))
	if got := d.next(t).Payload; got.Seq != m.GetSeq() || got.Preview != "taken over" {
		t.Fatalf("push %+v, want seq %d", got, m.GetSeq())
	}
}

// The embedded Redis (miniredis, what `go run .` uses) runs the queue too:
// streams, consumer groups and the scripts.
func TestPush_EmbeddedRedis(t *testing.T) {
	p := servertest.Protocols[0]
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) {
		config(t, t.TempDir(), "", 1)(c)
		c.RedisURL, c.RedisPrefix = "", ""
	}))
	ps := newPushService(t, vapidKey(t, srv, p))
	sender, r := newMember(t, srv, p, ""), newMember(t, srv, p, "")
	d := ps.newDevice()
	r.subscribe(t, d, false)
	d.answer(http.StatusServiceUnavailable)
	c := sender.group(t, "Embedded", r)
	var sent []*parleyv1.Message
	for _, text := range []string{"one", "two", "three"} {
		sent = append(sent, sender.send(t, c.GetId(), text))
	}
	// The first, after a retry; then the window's latest.
	if got := d.next(t).Payload; got.Seq != sent[0].GetSeq() {
		t.Fatalf("push %+v, want seq %d", got, sent[0].GetSeq())
	}
	if got := d.next(t).Payload; got.Seq != sent[2].GetSeq() {
		t.Fatalf("push %+v, want seq %d", got, sent[2].GetSeq())
	}
	if got := d.triesSoFar(); got != 3 {
		t.Fatalf("%d tries, want 3", got)
	}
}

// A deleted account leaves nothing of its pushes behind: its
// subscriptions (gone with its sessions) and its settings.
func TestPush_DeletedAccountForgotten(t *testing.T) {
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			prefix := servertest.SharedStores(t).RedisPrefix + servertest.UniqueName("push") + ":"
			srv := servertest.New(t, servertest.WithConfig(config(t, t.TempDir(), prefix, 1)))
			ps := newPushService(t, vapidKey(t, srv, p))
			alice := newMember(t, srv, p, "")
			alice.subscribe(t, ps.newDevice(), true)
			off := false
			if _, err := alice.push.UpdatePushSettings(context.Background(), req(alice, &parleyv1.UpdatePushSettingsRequest{ShowPreviews: &off})); err != nil {
				t.Fatalf("UpdatePushSettings: %v", err)
			}
			rdb := srv.App.Redis()
			tag := fmt.Sprintf("%s{push:%d}", prefix, alice.id)
			if n, err := rdb.Exists(context.Background(), tag+":subs", tag+":settings").Result(); err != nil || n != 2 {
				t.Fatalf("before the deletion, %d of the subscription and settings keys exist (%v); want 2: the test looks at the wrong keys", n, err)
			}
			if _, err := alice.auth.DeleteAccount(context.Background(), req(alice, &parleyv1.DeleteAccountRequest{Password: servertest.Password})); err != nil {
				t.Fatalf("DeleteAccount: %v", err)
			}
			if n, err := rdb.Exists(context.Background(), tag+":subs", tag+":settings").Result(); err != nil || n != 0 {
				t.Errorf("after the deletion, %d of the subscription and settings keys exist (%v); want none", n, err)
			}
		})
	}
}
