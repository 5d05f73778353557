package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
)

// user is one signed-in account with one device: its own HTTP connection,
// over gRPC (HTTP/2) or Connect (HTTP/1.1), through nginx.
type user struct {
	n        int
	id       int32
	name     string
	password string
	protocol string
	hc       *http.Client
	base     string
	auth     parleyv1connect.AuthServiceClient
	chats    parleyv1connect.ChatServiceClient
	msgs     parleyv1connect.MessageServiceClient
	live     parleyv1connect.LiveServiceClient
	media    parleyv1connect.MediaServiceClient
	chatIDs  []string

	mu      sync.Mutex
	token   string
	refresh string

	reauth sync.Mutex // one refresh at a time
}

func newUser(n int, base string, d *deployment, tag string) *user {
	u := &user{n: n, base: base, name: fmt.Sprintf("soak_%s_%d", tag, n), password: "soak password " + tag}
	tr := &http.Transport{
		DialContext:     (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSClientConfig: &tls.Config{RootCAs: d.ca},
	}
	var opts []connect.ClientOption
	var p http.Protocols
	if n%2 == 0 {
		// gRPC, as a mobile app: HTTP/2.
		u.protocol = "grpc"
		p.SetHTTP2(true)
		opts = append(opts, connect.WithGRPC())
	} else {
		// Connect, as the web chat: HTTP/1.1.
		u.protocol = "connect"
		p.SetHTTP1(true)
	}
	tr.Protocols = &p
	u.hc = &http.Client{Transport: tr}
	u.auth = parleyv1connect.NewAuthServiceClient(u.hc, base, opts...)
	u.chats = parleyv1connect.NewChatServiceClient(u.hc, base, opts...)
	u.msgs = parleyv1connect.NewMessageServiceClient(u.hc, base, opts...)
	u.live = parleyv1connect.NewLiveServiceClient(u.hc, base, opts...)
	u.media = parleyv1connect.NewMediaServiceClient(u.hc, base, opts...)
	return u
}

func req[T any](u *user, msg *T) *connect.Request[T] {
	r := connect.NewRequest(msg)
	u.mu.Lock()
	r.Header().Set("Authorization", "Bearer "+u.token)
	u.mu.Unlock()
	return r
}

func (u *user) register(ctx context.Context) error {
	res, err := u.auth.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{
		Username: u.name, Email: u.name + "@example.com", Password: u.password,
	}))
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	u.id = res.Msg.GetMe().GetUser().GetId()
	u.setTokens(res.Msg.GetTokens())
	return nil
}

func (u *user) setTokens(t *parleyv1.Tokens) {
	u.mu.Lock()
	u.token, u.refresh = t.GetAccessToken(), t.GetRefreshToken()
	u.mu.Unlock()
}

// accessToken is the current access token.
func (u *user) accessToken() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.token
}

// reauthenticate gets a new access token after a request made with
// refused was answered UNAUTHENTICATED, as an app does: with its refresh
// token, or by signing in again if the refresh token is refused too. One
// at a time: when another request has already replaced refused, there is
// nothing to do. A refresh that fails otherwise (the server unavailable)
// is left for the request's next attempt.
func (u *user) reauthenticate(ctx context.Context, st *stats, refused string) {
	u.reauth.Lock()
	defer u.reauth.Unlock()
	if u.accessToken() != refused {
		return
	}
	u.mu.Lock()
	refresh := u.refresh
	u.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	res, err := u.auth.Refresh(rctx, connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: refresh}))
	cancel()
	if err == nil {
		st.refreshes.Add(1)
		u.setTokens(res.Msg.GetTokens())
		return
	}
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		return
	}
	st.relogins.Add(1)
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if res, err := u.auth.Login(lctx, connect.NewRequest(&parleyv1.LoginRequest{Login: u.name, Password: u.password})); err == nil {
		u.setTokens(res.Msg.GetTokens())
	}
}

// retryable tells the errors after which a client tries again: the
// server or the path to it failed, not the request.
func retryable(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeInternal,
		connect.CodeUnknown, connect.CodeAborted, connect.CodeResourceExhausted, connect.CodeCanceled:
		return true
	}
	return false
}

// call runs one request as a client does: each attempt with a timeout,
// tried again after errors that are not the request's fault (signing in
// again after UNAUTHENTICATED), backing off, until ctx ends. It returns
// how many attempts failed.
func call(ctx context.Context, u *user, stats *stats, f func(ctx context.Context) error) (int, error) {
	wait := 100 * time.Millisecond
	for failed := 0; ; failed++ {
		token := u.accessToken()
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := f(actx)
		cancel()
		if err == nil {
			return failed, nil
		}
		if ctx.Err() != nil {
			return failed + 1, err
		}
		if failed%20 == 9 {
			fmt.Printf("user %d: %d attempts failed, the last with %v\n", u.n, failed+1, err)
		}
		switch {
		case connect.CodeOf(err) == connect.CodeUnauthenticated:
			u.reauthenticate(ctx, stats, token)
		case !retryable(err):
			return failed + 1, err
		}
		time.Sleep(wait/2 + mrand.N(wait))
		wait = min(2*wait, 2*time.Second)
	}
}

// record is what the soak remembers of one message it sent.
type record struct {
	key    string
	chatID string
	sender *user
	first  time.Time // the first attempt

	// Set once acknowledged.
	acked bool
	ack   time.Time
	seq   int64

	// For a file's message: its SHA-256.
	fileSum []byte
}

// stats are the soak's counters.
type stats struct {
	sends, acked, failedAttempts, refused, abandoned atomic.Int64
	refreshes, relogins                              atomic.Int64
	uploads, uploadAttemptsFailed, uploadsAbandoned  atomic.Int64
	resumes, resyncs, resyncErrors, liveDuplicates   atomic.Int64
}

// load is the traffic: users, their chats, their streams and their sends.
type load struct {
	cfg   config
	d     *deployment
	users []*user
	subs  []*subscriber
	stats stats
	start time.Time

	mu       sync.Mutex
	records  map[string]*record   // by client message id
	firstIn  map[string]time.Time // by client message id and receiving user
	dupTimes []time.Time          // when an event came twice to a stream
}

func newLoad(ctx context.Context, cfg config, d *deployment) (*load, error) {
	l := &load{cfg: cfg, d: d, records: map[string]*record{}, firstIn: map[string]time.Time{}}
	b := make([]byte, 4)
	rand.Read(b)
	tag := hex.EncodeToString(b)
	for n := range cfg.users {
		u := newUser(n, d.url, d, tag)
		if err := u.register(ctx); err != nil {
			return nil, err
		}
		l.users = append(l.users, u)
	}
	// Private chats between neighbours, and two groups over halves of
	// the users.
	for i := 0; i+1 < len(l.users); i += 2 {
		a, b := l.users[i], l.users[i+1]
		res, err := a.chats.CreatePrivateChat(ctx, req(a, &parleyv1.CreatePrivateChatRequest{PeerId: b.id}))
		if err != nil {
			return nil, fmt.Errorf("create private chat: %w", err)
		}
		a.chatIDs = append(a.chatIDs, res.Msg.GetChat().GetId())
		b.chatIDs = append(b.chatIDs, res.Msg.GetChat().GetId())
	}
	half := len(l.users) / 2
	for _, g := range [][]*user{l.users[:half], l.users[half:]} {
		admin := g[0]
		var ids []int32
		for _, u := range g[1:] {
			ids = append(ids, u.id)
		}
		res, err := admin.chats.CreateGroupChat(ctx, req(admin, &parleyv1.CreateGroupChatRequest{Name: "soak", MemberIds: ids}))
		if err != nil {
			return nil, fmt.Errorf("create group: %w", err)
		}
		for _, u := range g {
			u.chatIDs = append(u.chatIDs, res.Msg.GetChat().GetId())
		}
	}
	return l, nil
}

// members lists the users in a chat.
func (l *load) members(chatID string) []*user {
	var m []*user
	for _, u := range l.users {
		for _, c := range u.chatIDs {
			if c == chatID {
				m = append(m, u)
			}
		}
	}
	return m
}

// openStreams opens every user's stream and waits until each is ready.
func (l *load) openStreams(ctx context.Context, wg *sync.WaitGroup) error {
	ready := make(chan error, len(l.users))
	for _, u := range l.users {
		s := &subscriber{l: l, u: u, got: map[string]map[int64]string{}, maxSeq: map[string]int64{}}
		l.subs = append(l.subs, s)
		wg.Go(func() { s.run(ctx, ready) })
	}
	timeout := time.After(2 * time.Minute)
	for range l.users {
		select {
		case err := <-ready:
			if err != nil {
				return err
			}
		case <-timeout:
			return errors.New("the users' streams were not all ready within 2 minutes")
		}
	}
	return nil
}

// sender sends from u into its chats until ctx ends, one message at a
// time (an outbox: the next waits for the last one's ack), at about rate
// a second; the retries of its last message go on until sendCtx ends.
func (l *load) sender(ctx, sendCtx context.Context, u *user) {
	for i := 0; ctx.Err() == nil; i++ {
		pause := time.Duration(mrand.ExpFloat64() / l.cfg.rate * float64(time.Second))
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		chatID := u.chatIDs[mrand.IntN(len(u.chatIDs))]
		l.send(sendCtx, u, chatID, fmt.Sprintf("soak-%d-%d", u.n, i), nil, nil)
	}
}

// send sends one message until it is acknowledged or ctx ends.
func (l *load) send(ctx context.Context, u *user, chatID, key string, mediaIDs []string, sum []byte) {
	r := &record{key: key, chatID: chatID, sender: u, first: time.Now(), fileSum: sum}
	l.mu.Lock()
	l.records[key] = r
	l.mu.Unlock()
	l.stats.sends.Add(1)
	var msg *parleyv1.Message
	failed, err := call(ctx, u, &l.stats, func(ctx context.Context) error {
		res, err := u.msgs.SendMessage(ctx, req(u, &parleyv1.SendMessageRequest{
			ChatId: chatID, ClientMessageId: key, Text: "soak " + key, MediaIds: mediaIDs,
		}))
		if err == nil {
			msg = res.Msg.GetMessage()
		}
		return err
	})
	l.stats.failedAttempts.Add(int64(failed))
	if err != nil {
		if ctx.Err() != nil || retryable(err) {
			l.stats.abandoned.Add(1)
			fmt.Printf("send %s abandoned: %v\n", key, err)
		} else {
			l.stats.refused.Add(1)
			fmt.Printf("send %s refused: %v\n", key, err)
		}
		return
	}
	l.mu.Lock()
	r.acked, r.ack, r.seq = true, time.Now(), msg.GetSeq()
	l.mu.Unlock()
	l.stats.acked.Add(1)
}

// uploader has a random user upload a file into one of its chats and
// send it, then waits cfg.uploadEvery, until ctx ends.
func (l *load) uploader(ctx, sendCtx context.Context) {
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(l.cfg.uploadEvery):
		}
		u := l.users[mrand.IntN(len(l.users))]
		chatID := u.chatIDs[mrand.IntN(len(u.chatIDs))]
		data := make([]byte, 64<<10)
		rand.Read(data)
		sum := sha256.Sum256(data)
		var mediaID string
		failed, err := call(sendCtx, u, &l.stats, func(ctx context.Context) error {
			var err error
			mediaID, err = l.upload(ctx, u, chatID, data)
			return err
		})
		l.stats.uploadAttemptsFailed.Add(int64(failed))
		if err != nil {
			l.stats.uploadsAbandoned.Add(1)
			fmt.Printf("upload abandoned: %v\n", err)
			continue
		}
		l.stats.uploads.Add(1)
		l.send(sendCtx, u, chatID, fmt.Sprintf("soak-file-%d", i), []string{mediaID}, sum[:])
	}
}

// upload creates an upload and puts the file's bytes; a failed attempt
// starts again with a new upload.
func (l *load) upload(ctx context.Context, u *user, chatID string, data []byte) (string, error) {
	up, err := u.media.CreateUpload(ctx, req(u, &parleyv1.CreateUploadRequest{
		Target:   &parleyv1.CreateUploadRequest_ChatId{ChatId: chatID},
		FileName: "soak.bin", ContentType: "application/octet-stream", Size: int64(len(data)),
	}))
	if err != nil {
		return "", err
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodPut, u.base+up.Msg.GetUploadUrl(), bytes.NewReader(data))
	if err != nil {
		return "", err
	}
	u.mu.Lock()
	r.Header.Set("Authorization", "Bearer "+u.token)
	u.mu.Unlock()
	res, err := u.hc.Do(r)
	if err != nil {
		return "", connect.NewError(connect.CodeUnavailable, err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return "", connect.NewError(httpCode(res.StatusCode), fmt.Errorf("upload: %s", res.Status))
	}
	return up.Msg.GetMedia().GetId(), nil
}

// httpCode is the Connect code a client takes a plain HTTP status for.
func httpCode(status int) connect.Code {
	switch status {
	case http.StatusUnauthorized:
		return connect.CodeUnauthenticated
	case http.StatusTooManyRequests:
		return connect.CodeResourceExhausted
	case http.StatusBadRequest, http.StatusNotFound, http.StatusRequestEntityTooLarge, http.StatusForbidden:
		return connect.CodeInvalidArgument
	}
	return connect.CodeUnavailable
}

// subscriber is one user's live stream, resumed from its cursor whenever
// it ends, and re-synced as the API says when its cursor has expired.
type subscriber struct {
	l *load
	u *user

	mu      sync.Mutex
	got     map[string]map[int64]string // client message ids received, by chat and seq
	maxSeq  map[string]int64
	resyncs int
}

// silence is how long a stream may carry nothing (not even a heartbeat)
// before the client takes it for dead and opens another.
const silence = 40 * time.Second

func (s *subscriber) run(ctx context.Context, ready chan<- error) {
	cursor := ""
	first := true
	resync := false
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		token := s.u.accessToken()
		sctx, cancel := context.WithCancel(ctx)
		stream, err := s.u.live.Subscribe(sctx, req(s.u, &parleyv1.SubscribeRequest{ResumeCursor: cursor}))
		if err == nil {
			watchdog := time.AfterFunc(silence, cancel)
			for stream.Receive() {
				watchdog.Reset(silence)
				ev := stream.Msg().GetEvent()
				if c := ev.GetCursor(); c != "" {
					cursor = c
				}
				if ev.GetReady() != nil {
					wait = 100 * time.Millisecond
					if first {
						first = false
						ready <- nil
					}
					if resync {
						// The stream is live from here: what came
						// before it is in the chats' histories.
						resync = false
						s.resync(ctx)
					}
				}
				if m := ev.GetMessageCreated().GetMessage(); m != nil {
					s.received(m, true)
				}
			}
			watchdog.Stop()
			err = stream.Err()
			stream.Close()
		}
		cancel()
		if ctx.Err() != nil {
			break
		}
		if first && err != nil && !retryable(err) {
			ready <- fmt.Errorf("subscribe: %w", err)
			return
		}
		switch {
		case cursorExpired(err):
			resync, cursor = true, ""
		case connect.CodeOf(err) == connect.CodeUnauthenticated:
			s.u.reauthenticate(ctx, &s.l.stats, token)
		}
		s.l.stats.resumes.Add(1)
		time.Sleep(wait/2 + mrand.N(wait))
		wait = min(2*wait, 2*time.Second)
	}
	if first {
		ready <- errors.New("subscribe: the soak ended first")
	}
}

// cursorExpired tells the error that ends a stream whose cursor the
// server no longer holds.
func cursorExpired(err error) bool {
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeFailedPrecondition {
		return false
	}
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if info, ok := v.(*errdetails.ErrorInfo); ok && info.GetReason() == "CURSOR_EXPIRED" {
				return true
			}
		}
	}
	return false
}

// resync reads each chat's messages after the last seq the stream
// brought, as the API tells a client whose cursor expired.
func (s *subscriber) resync(ctx context.Context) {
	s.l.stats.resyncs.Add(1)
	s.mu.Lock()
	s.resyncs++
	s.mu.Unlock()
	for _, chatID := range s.u.chatIDs {
		s.mu.Lock()
		after := s.maxSeq[chatID]
		s.mu.Unlock()
		msgs, err := listMessages(ctx, s.u, &s.l.stats, chatID, after)
		if err != nil {
			s.l.stats.resyncErrors.Add(1)
			fmt.Printf("resync of %s for user %d: %v\n", chatID, s.u.n, err)
			continue
		}
		for _, m := range msgs {
			s.received(m, false)
		}
	}
}

// received notes a message the user's stream (live) or a re-sync brought.
func (s *subscriber) received(m *parleyv1.Message, live bool) {
	now := time.Now()
	s.mu.Lock()
	seqs := s.got[m.GetChatId()]
	if seqs == nil {
		seqs = map[int64]string{}
		s.got[m.GetChatId()] = seqs
	}
	_, dup := seqs[m.GetSeq()]
	seqs[m.GetSeq()] = m.GetClientMessageId()
	s.maxSeq[m.GetChatId()] = max(s.maxSeq[m.GetChatId()], m.GetSeq())
	s.mu.Unlock()
	if dup {
		if live {
			s.l.stats.liveDuplicates.Add(1)
			s.l.mu.Lock()
			s.l.dupTimes = append(s.l.dupTimes, now)
			s.l.mu.Unlock()
		}
		return
	}
	key := m.GetClientMessageId() + "@" + fmt.Sprint(s.u.n)
	s.l.mu.Lock()
	s.l.firstIn[key] = now
	s.l.mu.Unlock()
}

// has tells whether the stream (or a re-sync) brought a chat's seq, and
// the client message id of the message it brought there.
func (s *subscriber) has(chatID string, seq int64) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key, ok := s.got[chatID][seq]
	return key, ok
}

// listMessages reads a chat's messages after a seq, every page.
func listMessages(ctx context.Context, u *user, st *stats, chatID string, after int64) ([]*parleyv1.Message, error) {
	var out []*parleyv1.Message
	for {
		var page *parleyv1.ListMessagesResponse
		_, err := call(ctx, u, st, func(ctx context.Context) error {
			res, err := u.msgs.ListMessages(ctx, req(u, &parleyv1.ListMessagesRequest{
				ChatId: chatID, Cursor: &parleyv1.ListMessagesRequest_AfterSeq{AfterSeq: after}, Limit: 100,
			}))
			if err == nil {
				page = res.Msg
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		out = append(out, page.GetMessages()...)
		if !page.GetHasMore() || page.GetPageEndSeq() <= after {
			return out, nil
		}
		after = page.GetPageEndSeq()
	}
}

// download fetches a file's bytes as u and returns their SHA-256.
func download(ctx context.Context, u *user, path string) ([]byte, error) {
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, u.base+path, nil)
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	r.Header.Set("Authorization", "Bearer "+u.token)
	u.mu.Unlock()
	res, err := u.hc.Do(r)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		io.Copy(io.Discard, res.Body)
		return nil, connect.NewError(httpCode(res.StatusCode), fmt.Errorf("download: %s", res.Status))
	}
	h := sha256.New()
	if _, err := io.Copy(h, res.Body); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	return h.Sum(nil), nil
}
