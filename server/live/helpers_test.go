package live_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/live"
	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

// user is a signed-in test user with clients of one server over one
// protocol.
type user struct {
	id    int32
	name  string
	token string
	auth  parleyv1connect.AuthServiceClient
	chats parleyv1connect.ChatServiceClient
	msgs  parleyv1connect.MessageServiceClient
	live  parleyv1connect.LiveServiceClient
}

// newUser registers a user and returns it with clients of srv over p.
func newUser(t testing.TB, srv *servertest.Server, p servertest.Protocol) *user {
	t.Helper()
	u := (&user{name: servertest.UniqueName("live")}).on(srv, p)
	acc := servertest.Register(t, u.auth, u.name)
	u.id, u.token = acc.ID, acc.Token
	return u
}

// on returns the same signed-in user with clients of srv over p: another
// device, or the same one after a reconnection elsewhere.
func (u *user) on(srv *servertest.Server, p servertest.Protocol) *user {
	return u.with(p.HTTPClient, srv.URL, p.Options...)
}

func (u *user) with(hc connect.HTTPClient, url string, opts ...connect.ClientOption) *user {
	c := *u
	c.auth = parleyv1connect.NewAuthServiceClient(hc, url, opts...)
	c.chats = parleyv1connect.NewChatServiceClient(hc, url, opts...)
	c.msgs = parleyv1connect.NewMessageServiceClient(hc, url, opts...)
	c.live = parleyv1connect.NewLiveServiceClient(hc, url, opts...)
	return &c
}

// login signs the user in again (after Redis lost its sessions).
func (u *user) login(t testing.TB) {
	t.Helper()
	res, err := u.auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: u.name, Password: servertest.Password}))
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	u.token = res.Msg.GetTokens().GetAccessToken()
}

// req returns a request for msg signed by u.
func req[T any](u *user, msg *T) *connect.Request[T] { return servertest.WithToken(msg, u.token) }

func ids(us ...*user) []int32 {
	var out []int32
	for _, u := range us {
		out = append(out, u.id)
	}
	return out
}

// group creates a group of admin and the members and returns its id.
func group(t testing.TB, admin *user, members ...*user) string {
	t.Helper()
	return servertest.GroupChat(t, admin.chats, admin.token, "group", ids(members...)...).GetId()
}

// private returns the id of the private chat between a and b, started by
// a and accepted by b.
func private(t testing.TB, a, b *user) string {
	t.Helper()
	id := servertest.PrivateChat(t, a.chats, a.token, b.id).GetId()
	servertest.AcceptRequest(t, b.chats, b.token, id)
	return id
}

// send sends a text message to the chat.
func send(t testing.TB, u *user, chatID, text string) *parleyv1.Message {
	t.Helper()
	return servertest.Send(t, u.msgs, u.token, chatID, text)
}

func trySend(u *user, chatID, clientID, text string) (*parleyv1.Message, error) {
	res, err := u.msgs.SendMessage(context.Background(), req(u, &parleyv1.SendMessageRequest{
		ChatId: chatID, ClientMessageId: clientID, Text: text,
	}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetMessage(), nil
}

// stream is an open Subscribe stream, read by the test.
type stream struct {
	t      testing.TB
	s      *connect.ServerStreamForClient[parleyv1.SubscribeResponse]
	cancel context.CancelFunc
	// cursor is the last cursor received.
	cursor string
	ready  *parleyv1.Ready
	// pending holds the events replayed before ready, not yet read.
	pending []*parleyv1.Event
	// presence: whether next returns presence events.
	presence bool
}

// subscribe opens a stream and reads up to its ready event.
func subscribe(t testing.TB, u *user, cursor string) *stream {
	t.Helper()
	s, err := trySubscribe(t, u, cursor)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	return s
}

// trySubscribe opens a stream and reads up to its ready event, returning
// the error that ended the stream before it.
func trySubscribe(t testing.TB, u *user, cursor string) (*stream, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	s, err := u.live.Subscribe(ctx, req(u, &parleyv1.SubscribeRequest{ResumeCursor: cursor}))
	if err != nil {
		cancel()
		return nil, err
	}
	st := &stream{t: t, s: s, cancel: cancel, cursor: cursor}
	t.Cleanup(st.close)
	for {
		ev, err := st.tryNext()
		if err != nil {
			return nil, err
		}
		if r := ev.GetReady(); r != nil {
			st.ready = r
			return st, nil
		}
		st.pending = append(st.pending, ev)
	}
}

func (s *stream) close() {
	s.cancel()
	s.s.Close()
}

// tryNext returns the next event other than a heartbeat (and presence,
// unless the stream asked for it), first those replayed before ready.
func (s *stream) tryNext() (*parleyv1.Event, error) {
	for s.ready != nil && len(s.pending) > 0 {
		ev := s.pending[0]
		s.pending = s.pending[1:]
		if s.presence || ev.GetPresence() == nil {
			return ev, nil
		}
	}
	for s.s.Receive() {
		ev := s.s.Msg().GetEvent()
		if ev.GetHeartbeat() != nil || (ev.GetPresence() != nil && !s.presence && s.ready != nil) {
			if ev.GetCursor() != "" {
				s.cursor = ev.GetCursor()
			}
			continue
		}
		if ev.GetCursor() != "" {
			s.cursor = ev.GetCursor()
		}
		return ev, nil
	}
	if err := s.s.Err(); err != nil {
		return nil, err
	}
	return nil, errEnded
}

var errEnded = errors.New("the stream ended")

func (s *stream) next() *parleyv1.Event {
	s.t.Helper()
	ev, err := s.tryNext()
	if err != nil {
		s.t.Fatalf("stream: %v", err)
	}
	return ev
}

// message returns the next message_created event's message, skipping
// other events.
func (s *stream) message() *parleyv1.Message {
	s.t.Helper()
	for {
		if m := s.next().GetMessageCreated().GetMessage(); m != nil {
			return m
		}
	}
}

// isCursorExpired tells the explicit re-sync error.
func isCursorExpired(err error) bool {
	var cerr *connect.Error
	if !errors.As(err, &cerr) || cerr.Code() != connect.CodeFailedPrecondition {
		return false
	}
	for _, d := range cerr.Details() {
		v, derr := d.Value()
		if info, ok := v.(*errdetails.ErrorInfo); derr == nil && ok && info.GetReason() == live.CursorExpiredReason {
			return true
		}
	}
	return false
}
