package auth

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/rpcerr"
)

// NewAccount is what Register asks the user domain to create.
type NewAccount struct {
	Username     string
	Email        string
	PasswordHash string
	PhoneNumber  *string
}

// Accounts is what authentication needs from the user domain.
type Accounts interface {
	// CreateAccount creates the user, its profile and its first avatar in
	// one transaction, and returns the user's id. A taken username or
	// email is a connect ALREADY_EXISTS error.
	CreateAccount(ctx context.Context, a NewAccount) (userID int, err error)
	// LookupLogin finds the account whose username or email is login, in
	// any case. It returns 0 and "" when there is none.
	LookupLogin(ctx context.Context, login string) (userID int, passwordHash string, err error)
	// PasswordHash returns the account's password hash; a connect
	// NOT_FOUND error when there is no such account.
	PasswordHash(ctx context.Context, userID int) (string, error)
	// RecordLogin sets the account's last login time to now; a connect
	// NOT_FOUND error when there is no such account (any more).
	RecordLogin(ctx context.Context, userID int) error
	// Me returns the account as its owner sees it.
	Me(ctx context.Context, userID int) (*parleyv1.Me, error)
}

// SessionEnds is told of every session that ends before it expires
// (Logout, RevokeSession, a reused refresh token), so that what outlives
// the requests made with its tokens, the live streams, ends with it. It
// need not be reliable: it may drop a notice, which the live streams'
// own periodic checks of their session make up for.
type SessionEnds interface {
	// SessionEnded says that the user's session is gone.
	SessionEnded(ctx context.Context, userID int, sessionID string)
}

// Config configures authentication.
type Config struct {
	// Keys sign access and refresh tokens (with the ring's signing key)
	// and verify them (with any of its keys).
	Keys *keyring.Ring
	// AccessTTL is the lifetime of an access token (at most 15 minutes).
	AccessTTL time.Duration
	// RefreshTTL is how long a session lives without a Refresh.
	RefreshTTL time.Duration
	// RateLimits bound login and registration attempts.
	RateLimits RateLimits
	// RedisPrefix starts every Redis key.
	RedisPrefix string
	// ClientIPHeader, when set, is the request header (such as X-Real-IP
	// or X-Forwarded-For) that a trusted reverse proxy sets to the
	// client's address; of a list, the last entry (the one the proxy
	// added) counts, in the last line when the header comes in several.
	// Leave it empty when clients connect directly: they could forge it.
	ClientIPHeader string
	// TrustedProxies are the networks of the proxies whose ClientIPHeader
	// counts: from any other peer the header is ignored, and the
	// connection's address is the client's. None: the header counts from
	// no peer.
	TrustedProxies []netip.Prefix
	// UnauthenticatedPerAddress bounds the requests without a caller
	// (sign-in, server info, health, reflection, identicons) that one
	// client address may have in flight on this instance at once;
	// DefaultUnauthenticatedPerAddress when zero.
	UnauthenticatedPerAddress int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// SessionEnds, when set, is told of sessions ended early.
	SessionEnds SessionEnds
	// Background runs the work that the account calls (AccountService)
	// go on with after answering, so that the server can wait for it
	// when it stops; when nil, New makes one that nobody waits for.
	Background *Background
	// Replicas is how many Redis replicas must confirm (WAIT) that they
	// have a session's end or a refresh token's rotation before it is
	// answered, so that a failover cannot undo it; 0: none.
	Replicas int
}

// MaxAccessTTL is the longest an access token may live.
const MaxAccessTTL = 15 * time.Minute

// Service implements parley.v1.AuthService and the authentication
// middleware.
type Service struct {
	log       *slog.Logger
	accounts  Accounts
	tokens    *tokens
	sessions  *sessionStore
	passwords *passwords
	limiter   *limiter
	unauth    *inFlight
	cfg       Config
	// deletions deletes accounts (see DeleteAccountsWith); nil: none.
	deletions *Deletions
}

var _ parleyv1connect.AuthServiceHandler = (*Service)(nil)

// New returns the authentication service.
func New(log *slog.Logger, rdb redis.UniversalClient, accounts Accounts, cfg Config) (*Service, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.AccessTTL <= 0 || cfg.AccessTTL > MaxAccessTTL {
		return nil, fmt.Errorf("access token lifetime %s: want more than 0 and at most %s", cfg.AccessTTL, MaxAccessTTL)
	}
	if cfg.RefreshTTL < cfg.AccessTTL {
		return nil, fmt.Errorf("session lifetime %s is shorter than the access token's", cfg.RefreshTTL)
	}
	if cfg.RateLimits == (RateLimits{}) {
		cfg.RateLimits = DefaultRateLimits
	}
	if cfg.RateLimits.LoginFailuresPerAccountTotal <= 0 {
		cfg.RateLimits.LoginFailuresPerAccountTotal = 3 * cfg.RateLimits.LoginFailuresPerAccount
	}
	if cfg.Background == nil {
		cfg.Background = new(Background)
	}
	if cfg.UnauthenticatedPerAddress <= 0 {
		cfg.UnauthenticatedPerAddress = DefaultUnauthenticatedPerAddress
	}
	tok, err := newTokens(cfg.Keys, cfg.AccessTTL, cfg.Now)
	if err != nil {
		return nil, err
	}
	pw, err := newPasswords(PasswordParams)
	if err != nil {
		return nil, err
	}
	return &Service{
		log:       log,
		accounts:  accounts,
		tokens:    tok,
		sessions:  &sessionStore{rdb: rdb, prefix: cfg.RedisPrefix, refreshTTL: cfg.RefreshTTL, now: cfg.Now, replicas: cfg.Replicas},
		passwords: pw,
		limiter:   &limiter{l: redis_rate.NewLimiter(rdb), rdb: rdb, prefix: cfg.RedisPrefix, cfg: cfg.RateLimits, now: cfg.Now},
		unauth:    newInFlight(cfg.UnauthenticatedPerAddress),
		cfg:       cfg,
	}, nil
}

// Register creates an account and signs it in.
func (s *Service) Register(
	ctx context.Context, req *connect.Request[parleyv1.RegisterRequest],
) (*connect.Response[parleyv1.RegisterResponse], error) {
	addr := s.clientAddr(req.Peer().Addr, req.Header())
	if err := s.limiter.register(ctx, addr); err != nil {
		return nil, rpcerr.From(ctx, s.log, "register", err)
	}
	hash, err := s.passwords.hash(ctx, req.Msg.GetPassword())
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "register", err)
	}
	userID, err := s.accounts.CreateAccount(ctx, NewAccount{
		Username:     req.Msg.GetUsername(),
		Email:        req.Msg.GetEmail(),
		PasswordHash: hash,
		PhoneNumber:  req.Msg.PhoneNumber,
	})
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "register", err)
	}
	me, tokens, err := s.signIn(ctx, userID, req.Header().Get("User-Agent"), addr)
	if err != nil {
		return nil, err
	}
	if err := s.limiter.remember(ctx, userAccount(userID), addr); err != nil {
		s.log.WarnContext(ctx, "register: remember the network", "user", userID, "err", err)
	}
	return connect.NewResponse(&parleyv1.RegisterResponse{Me: me, Tokens: tokens}), nil
}

// errBadLogin is the one answer to an unknown login and a wrong password.
var errBadLogin = connect.NewError(connect.CodeUnauthenticated, errors.New("wrong login or password"))

// Login signs in with a username or email and a password.
func (s *Service) Login(
	ctx context.Context, req *connect.Request[parleyv1.LoginRequest],
) (*connect.Response[parleyv1.LoginResponse], error) {
	login, addr := req.Msg.GetLogin(), s.clientAddr(req.Peer().Addr, req.Header())
	userID, hash, err := s.accounts.LookupLogin(ctx, login)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "login", err)
	}
	account := "login:" + strings.ToLower(login)
	if userID != 0 {
		account = userAccount(userID)
	}
	if err := s.limiter.attemptLogin(ctx, account, addr); err != nil {
		return nil, rpcerr.From(ctx, s.log, "login", err)
	}
	ok, err := s.passwords.verify(ctx, req.Msg.GetPassword(), hash)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "login", err)
	}
	if !ok {
		return nil, errBadLogin
	}
	if err := s.accounts.RecordLogin(ctx, userID); err != nil {
		if connect.CodeOf(err) == connect.CodeNotFound {
			// Its deletion ended since it was looked up.
			return nil, errBadLogin
		}
		return nil, rpcerr.From(ctx, s.log, "login", err)
	}
	me, tokens, err := s.signIn(ctx, userID, req.Header().Get("User-Agent"), addr)
	if err != nil {
		return nil, err
	}
	// A change of the password ends the sessions open when it is made
	// (the hash first, then the sessions): one opened with the old
	// password after its hash was read here, but before the change had
	// ended the others, goes now.
	now, err := s.accounts.PasswordHash(ctx, userID)
	if err == nil && now != hash {
		err = errBadLogin
	}
	if err != nil {
		if rerr := s.sessions.revoke(context.WithoutCancel(ctx), userID, tokens.GetSessionId()); rerr != nil && !errors.Is(rerr, errNoSession) {
			s.log.ErrorContext(ctx, "login: revoke a session of a password changed meanwhile", "user", userID, "err", rerr)
		}
		if errors.Is(err, errBadLogin) || connect.CodeOf(err) == connect.CodeNotFound {
			return nil, errBadLogin
		}
		return nil, rpcerr.From(ctx, s.log, "login", err)
	}
	// Signed in: the failed attempts from here are forgiven. The login
	// stands should this fail; the attempts then run out by themselves.
	if err := s.limiter.loginSucceeded(ctx, account, addr); err != nil {
		s.log.WarnContext(ctx, "login: clear failed attempts", "user", userID, "err", err)
	}
	return connect.NewResponse(&parleyv1.LoginResponse{Me: me, Tokens: tokens}), nil
}

// signIn opens a session for the user and returns the account and tokens.
func (s *Service) signIn(ctx context.Context, userID int, userAgent, addr string) (*parleyv1.Me, *parleyv1.Tokens, error) {
	salt := make([]byte, 16)
	rand.Read(salt)
	sess := &session{
		ID:        newSessionID(),
		UserID:    userID,
		Salt:      base64.RawURLEncoding.EncodeToString(salt),
		UserAgent: truncate(userAgent, 256),
		Address:   addr,
	}
	access, accessExp, err := s.tokens.issueAccess(userID, sess.ID)
	if err != nil {
		return nil, nil, rpcerr.From(ctx, s.log, "sign in", err)
	}
	if err := s.sessions.create(ctx, sess, access); err != nil {
		return nil, nil, rpcerr.From(ctx, s.log, "sign in", err)
	}
	me, err := s.accounts.Me(ctx, userID)
	if err != nil {
		// The account may have begun its deletion since it was looked up,
		// after which EndSessions might not have seen this session: it
		// goes.
		if rerr := s.sessions.revoke(context.WithoutCancel(ctx), userID, sess.ID); rerr != nil && !errors.Is(rerr, errNoSession) {
			s.log.ErrorContext(ctx, "sign in: revoke the session of an account not found", "user", userID, "err", rerr)
		}
		if connect.CodeOf(err) == connect.CodeNotFound {
			return nil, nil, errBadLogin
		}
		return nil, nil, rpcerr.From(ctx, s.log, "sign in", err)
	}
	return me, s.tokenPair(sess, access, accessExp), nil
}

func (s *Service) tokenPair(sess *session, access string, accessExp time.Time) *parleyv1.Tokens {
	return &parleyv1.Tokens{
		SessionId:             sess.ID,
		AccessToken:           access,
		AccessTokenExpiresAt:  timestamppb.New(accessExp),
		RefreshToken:          s.tokens.issueRefresh(sess.UserID, sess.ID, sess.Generation, sess.Salt),
		RefreshTokenExpiresAt: timestamppb.New(s.cfg.Now().Add(s.cfg.RefreshTTL)),
	}
}

// Refresh exchanges a refresh token for a new token pair.
func (s *Service) Refresh(
	ctx context.Context, req *connect.Request[parleyv1.RefreshRequest],
) (*connect.Response[parleyv1.RefreshResponse], error) {
	invalid := connect.NewError(connect.CodeUnauthenticated, errors.New("invalid refresh token"))
	rt, ok := parseRefresh(req.Msg.GetRefreshToken())
	if !ok {
		return nil, invalid
	}
	sess, err := s.sessions.get(ctx, rt.userID, rt.sessionID)
	if errors.Is(err, errNoSession) {
		return nil, connect.NewError(connect.CodeUnauthenticated, errNoSession)
	}
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "refresh", err)
	}
	if !s.tokens.verifyRefresh(rt, sess.Salt) {
		return nil, invalid
	}
	access, accessExp, err := s.tokens.issueAccess(sess.UserID, sess.ID)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "refresh", err)
	}
	gen, err := s.sessions.rotate(ctx, sess.UserID, sess.ID, rt.generation, access, rotationClient(req.Header().Get("User-Agent")))
	switch {
	case errors.Is(err, errRefreshReused):
		s.log.WarnContext(ctx, "refresh token reused; session revoked", "user", sess.UserID, "session", sess.ID)
		s.ended(ctx, sess.UserID, sess.ID)
		// A copy's refreshes made its network known: none counts now.
		if err := s.limiter.forgetNetworks(ctx, userAccount(sess.UserID)); err != nil {
			s.log.WarnContext(ctx, "refresh: forget the networks", "user", sess.UserID, "err", err)
		}
		return nil, connect.NewError(connect.CodeUnauthenticated, errRefreshReused)
	case errors.Is(err, errNoSession):
		return nil, connect.NewError(connect.CodeUnauthenticated, errNoSession)
	case err != nil:
		return nil, rpcerr.From(ctx, s.log, "refresh", err)
	}
	sess.Generation = gen
	// The session's owner uses this network (see
	// LoginFailuresPerAccountTotal).
	if err := s.limiter.remember(ctx, userAccount(sess.UserID), s.clientAddr(req.Peer().Addr, req.Header())); err != nil {
		s.log.WarnContext(ctx, "refresh: remember the network", "user", sess.UserID, "err", err)
	}
	return connect.NewResponse(&parleyv1.RefreshResponse{Tokens: s.tokenPair(sess, access, accessExp)}), nil
}

// Logout ends the caller's session.
func (s *Service) Logout(
	ctx context.Context, _ *connect.Request[parleyv1.LogoutRequest],
) (*connect.Response[parleyv1.LogoutResponse], error) {
	id, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.sessions.revoke(ctx, id.UserID, id.SessionID); err != nil && !errors.Is(err, errNoSession) {
		return nil, rpcerr.From(ctx, s.log, "logout", err)
	}
	// Even when the session was already gone: its streams may not know.
	s.ended(ctx, id.UserID, id.SessionID)
	return connect.NewResponse(&parleyv1.LogoutResponse{}), nil
}

// ListSessions lists the caller's open sessions.
func (s *Service) ListSessions(
	ctx context.Context, _ *connect.Request[parleyv1.ListSessionsRequest],
) (*connect.Response[parleyv1.ListSessionsResponse], error) {
	id, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	list, err := s.sessions.list(ctx, id.UserID)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "list sessions", err)
	}
	res := &parleyv1.ListSessionsResponse{}
	for _, sess := range list {
		res.Sessions = append(res.Sessions, &parleyv1.Session{
			Id:         sess.ID,
			UserAgent:  sess.UserAgent,
			Address:    sess.Address,
			CreatedAt:  timestamppb.New(sess.CreatedAt),
			LastUsedAt: timestamppb.New(sess.LastUsedAt),
			Current:    sess.ID == id.SessionID,
		})
	}
	return connect.NewResponse(res), nil
}

// RevokeSession ends one of the caller's sessions.
func (s *Service) RevokeSession(
	ctx context.Context, req *connect.Request[parleyv1.RevokeSessionRequest],
) (*connect.Response[parleyv1.RevokeSessionResponse], error) {
	id, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	sid := req.Msg.GetSessionId()
	if !validSessionID(sid) {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("session_id: not a session id"))
	}
	switch err := s.sessions.revoke(ctx, id.UserID, sid); {
	case errors.Is(err, errNoSession):
		return nil, connect.NewError(connect.CodeNotFound, errors.New("no such session"))
	case err != nil:
		return nil, rpcerr.From(ctx, s.log, "revoke session", err)
	}
	s.ended(ctx, id.UserID, sid)
	return connect.NewResponse(&parleyv1.RevokeSessionResponse{}), nil
}

// ended tells SessionEnds, if any, that a session is gone.
func (s *Service) ended(ctx context.Context, userID int, sessionID string) {
	if s.cfg.SessionEnds != nil {
		s.cfg.SessionEnds.SessionEnded(ctx, userID, sessionID)
	}
}

// SessionsOpen reports, for each caller, whether its session is still
// open, for what outlives the request the middleware checked (a live
// stream) to check again.
func (s *Service) SessionsOpen(ctx context.Context, ids []Identity) ([]bool, error) {
	return s.sessions.open(ctx, ids)
}

// clientAddr is the client's IP address: from the trusted proxy header when
// one is configured, the connection comes from a trusted proxy and the
// header is there, else from the connection's remote address (host:port,
// as connect.Peer.Addr and http.Request.RemoteAddr give it). Rate limits
// and the middleware's bound on unauthenticated requests both use it, so
// a proxy in front is never one client to either, and a client that
// reaches the server around the proxy cannot choose its address.
func (s *Service) clientAddr(remote string, h interface{ Values(string) []string }) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	if s.cfg.ClientIPHeader != "" && s.trustedProxy(host) {
		// A client can put anything in front, in the header line the proxy
		// appends to or in lines of its own before the one a proxy adds
		// (HAProxy's option forwardfor does): the last entry of the last
		// line is the proxy's.
		if lines := h.Values(s.cfg.ClientIPHeader); len(lines) > 0 {
			v := lines[len(lines)-1]
			if ip := headerIP(v[strings.LastIndex(v, ",")+1:]); ip != nil {
				return ip.String()
			}
		}
	}
	return host
}

// trustedProxy reports whether a connection from host (an IP address)
// comes from one of the trusted proxies.
func (s *Service) trustedProxy(host string) bool {
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap().WithZone("")
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// headerIP reads a proxy header's address: an IP address, or one with a
// port as some load balancers write it ("198.51.100.7:41234",
// "[2001:db8::7]:443"); nil for anything else.
func headerIP(v string) net.IP {
	v = strings.TrimSpace(v)
	if ip := net.ParseIP(v); ip != nil {
		return ip
	}
	if host, _, err := net.SplitHostPort(v); err == nil {
		return net.ParseIP(host)
	}
	return net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(v, "["), "]"))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}
