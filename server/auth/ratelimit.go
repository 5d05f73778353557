package auth

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/parley-chat/parley/server/rpcerr"
)

// RateLimits bound the attempts that guess passwords or mass-create
// accounts. They are counted in Redis, so all instances share them.
type RateLimits struct {
	// LoginFailuresPerAccount is how many failed logins one account may
	// get from one client address (see clientNet) per LoginWindow.
	// Attempts are counted as they start, so parallel guesses cannot
	// overrun it, and a successful login resets the count. Counted per
	// address, so that a stranger's guesses do not lock the owner out.
	LoginFailuresPerAccount int
	// LoginFailuresPerAccountTotal is how many failed logins one account
	// may get from all addresses together per LoginWindow: the bound on
	// guesses spread over many addresses. Once it is reached, logins
	// still pass from the networks the account signed in from, signed up
	// from or refreshed a session from in the last KnownNetworkTTL
	// (their own budget still applies), so that strangers' guesses do
	// not lock the owner out. 0: three times LoginFailuresPerAccount.
	LoginFailuresPerAccountTotal int
	// LoginAttemptsPerAddress is how many logins one client address may
	// attempt per LoginWindow, across all accounts.
	LoginAttemptsPerAddress int
	// LoginWindow is the window of the login limits.
	LoginWindow time.Duration
	// RegistrationsPerAddress is how many accounts one client address may
	// create per RegistrationWindow.
	RegistrationsPerAddress int
	// RegistrationWindow is the window of the registration limit.
	RegistrationWindow time.Duration
}

// DefaultRateLimits are the limits a server runs with unless configured.
var DefaultRateLimits = RateLimits{
	LoginFailuresPerAccount:      10,
	LoginFailuresPerAccountTotal: 30,
	LoginAttemptsPerAddress:      100,
	LoginWindow:                  15 * time.Minute,
	RegistrationsPerAddress:      10,
	RegistrationWindow:           time.Hour,
}

type limiter struct {
	l      *redis_rate.Limiter
	rdb    redis.UniversalClient
	prefix string
	cfg    RateLimits
	now    func() time.Time
}

func limit(n int, window time.Duration) redis_rate.Limit {
	return redis_rate.Limit{Rate: n, Burst: n, Period: window}
}

// userAccount names an existing account to the limits (see attemptLogin).
func userAccount(userID int) string { return "user:" + strconv.Itoa(userID) }

func (l *limiter) accountKey(account string) string {
	return l.prefix + "login-account:" + strings.ToLower(account)
}

// accountFromKey counts the logins of an account from one address.
func (l *limiter) accountFromKey(account, addr string) string {
	return l.accountKey(account) + ":from:" + clientNet(addr)
}

// KnownNetworkTTL is how long a network an account signed in from stays
// known to it, past its total of failed logins.
const KnownNetworkTTL = 30 * 24 * time.Hour

// knownKey holds the networks the account signed in from, each scored
// with the time of its last login (ms).
func (l *limiter) knownKey(account string) string {
	return l.prefix + "login-known:" + strings.ToLower(account)
}

// reauthKey counts the re-authentications of an account.
func (l *limiter) reauthKey(account string) string {
	return l.prefix + "reauth-account:" + strings.ToLower(account)
}

func (l *limiter) loginAddressKey(addr string) string {
	return l.prefix + "login-address:" + clientNet(addr)
}

func (l *limiter) registerAddressKey(addr string) string {
	return l.prefix + "register-address:" + clientNet(addr)
}

// clientNet is what the limits per client address count under: an IPv4
// address itself, and an IPv6 one's /64. A host is given a whole /64
// (SLAAC, privacy addresses) and may send from any address in it, so a
// limit per IPv6 address would give it 2^64 budgets. Anything else
// (not an IP address) counts as it is.
func clientNet(addr string) string {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return addr
	}
	if ip = ip.Unmap(); ip.Is4() {
		return ip.String()
	}
	return netip.PrefixFrom(ip.WithZone(""), 64).Masked().String()
}

// attemptLogin takes one attempt from the address's budget, the
// account's from that address and the account's in all, in that order,
// and refuses the login at the first that is spent (the budgets after it
// keep their attempt). account names the account: its user id when the
// login exists, else the login itself, so that the username and the email
// share one budget.
func (l *limiter) attemptLogin(ctx context.Context, account, addr string) error {
	for _, x := range []struct {
		name, key string
		lim       redis_rate.Limit
		msg       string
		// knownPass: the account's known networks pass when it is spent
		knownPass bool
	}{
		{"login_address", l.loginAddressKey(addr), limit(l.cfg.LoginAttemptsPerAddress, l.cfg.LoginWindow), "too many logins from this address", false},
		{"login_account", l.accountFromKey(account, addr), limit(l.cfg.LoginFailuresPerAccount, l.cfg.LoginWindow), "too many failed logins for this account", false},
		{"login_account", l.accountKey(account), limit(l.cfg.LoginFailuresPerAccountTotal, l.cfg.LoginWindow), "too many failed logins for this account", true},
	} {
		res, err := l.l.Allow(ctx, x.key, x.lim)
		if err != nil {
			return fmt.Errorf("rate limit: %w", err)
		}
		if res.Allowed == 0 {
			if x.knownPass {
				known, err := l.known(ctx, account, addr)
				if err != nil || known {
					return err
				}
			}
			return rpcerr.TooMany(x.name, x.msg+"; try again later", res.RetryAfter)
		}
	}
	return nil
}

// known reports whether the account signed in from addr's network in the
// last KnownNetworkTTL.
func (l *limiter) known(ctx context.Context, account, addr string) (bool, error) {
	at, err := l.rdb.ZScore(ctx, l.knownKey(account), clientNet(addr)).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("rate limit: %w", err)
	}
	return l.now().Sub(time.UnixMilli(int64(at))) < KnownNetworkTTL, nil
}

// remember makes addr's network known to the account.
func (l *limiter) remember(ctx context.Context, account, addr string) error {
	key, now := l.knownKey(account), l.now()
	_, err := l.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, key, redis.Z{Score: float64(now.UnixMilli()), Member: clientNet(addr)})
		p.ZRemRangeByScore(ctx, key, "-inf", strconv.FormatInt(now.Add(-KnownNetworkTTL).UnixMilli(), 10))
		p.PExpire(ctx, key, KnownNetworkTTL)
		return nil
	})
	if err != nil {
		return fmt.Errorf("rate limit: %w", err)
	}
	return nil
}

// attemptReauth takes one attempt from the account's budget of
// re-authentications, as large as its logins' from one address: a session
// guesses its password no faster than a login could, and strangers'
// failed logins do not keep the owner from re-authenticating.
func (l *limiter) attemptReauth(ctx context.Context, account string) error {
	res, err := l.l.Allow(ctx, l.reauthKey(account), limit(l.cfg.LoginFailuresPerAccount, l.cfg.LoginWindow))
	if err != nil {
		return fmt.Errorf("rate limit: %w", err)
	}
	if res.Allowed == 0 {
		return rpcerr.TooMany("login_account", "too many failed logins for this account; try again later", res.RetryAfter)
	}
	return nil
}

// loginSucceeded clears the account's failed logins from addr, and makes
// addr's network known to it. The account's total is left to run out by
// itself: an owner's login, which passes its networks past the total,
// must not give guessers elsewhere a new one.
func (l *limiter) loginSucceeded(ctx context.Context, account, addr string) error {
	if err := l.reset(ctx, l.accountFromKey(account, addr)); err != nil {
		return err
	}
	return l.remember(ctx, account, addr)
}

// reauthSucceeded clears the account's failed re-authentications.
func (l *limiter) reauthSucceeded(ctx context.Context, account string) error {
	return l.reset(ctx, l.reauthKey(account))
}

// forgive clears the account's failed logins from addr and its
// re-authentications, and makes addr's network known to it: its owner
// proved who it is otherwise (a reset by mail).
func (l *limiter) forgive(ctx context.Context, account, addr string) error {
	if err := l.reset(ctx, l.accountFromKey(account, addr), l.reauthKey(account)); err != nil {
		return err
	}
	return l.remember(ctx, account, addr)
}

// forgetNetworks forgets the networks the account signed in from: its
// password changed, and the sessions opened with the old one ended; or a
// copy of a refresh token was used, which made its network known.
func (l *limiter) forgetNetworks(ctx context.Context, account string) error {
	if err := l.rdb.Del(ctx, l.knownKey(account)).Err(); err != nil {
		return fmt.Errorf("rate limit: %w", err)
	}
	return nil
}

func (l *limiter) reset(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		if err := l.l.Reset(ctx, k); err != nil {
			return fmt.Errorf("rate limit: %w", err)
		}
	}
	return nil
}

// register counts a registration attempt from the address and refuses it
// over the limit.
func (l *limiter) register(ctx context.Context, addr string) error {
	lim := limit(l.cfg.RegistrationsPerAddress, l.cfg.RegistrationWindow)
	res, err := l.l.Allow(ctx, l.registerAddressKey(addr), lim)
	if err != nil {
		return fmt.Errorf("rate limit: %w", err)
	}
	if res.Allowed == 0 {
		return rpcerr.TooMany("register_address", "too many registrations from this address", res.RetryAfter)
	}
	return nil
}

// slidingWindow counts the attempts of the last window under KEYS[1], a
// sorted set of their times (Unix milliseconds by the service's clock):
// it drops those at or before ARGV[1] - ARGV[2] (now - window), and with
// ARGV[3] (n) or more left refuses, answering how many milliseconds until
// the oldest one leaves the window; else it records this attempt as
// ARGV[4] (a unique member) and answers -1. One key per call: safe on a
// Redis Cluster.
var slidingWindow = redis.NewScript(`
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
	local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
	return tonumber(oldest[2]) + window - now
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return -1`)

// inWindow takes one attempt under key, allowing at most n (at least 1)
// in any window of the given length: a true sliding window, unlike the
// GCRA of redis_rate, which lets a full burst through and then refills,
// so that an hour can hold nearly twice n. A refused attempt does not
// count. The window is measured by the service's clock.
func (l *limiter) inWindow(ctx context.Context, name, key string, n int, window time.Duration, msg string) error {
	retry, err := slidingWindow.Run(ctx, l.rdb, []string{l.prefix + "window:" + key},
		l.now().UnixMilli(), window.Milliseconds(), n, newSessionID()).Int64()
	if err != nil {
		return fmt.Errorf("rate limit: %w", err)
	}
	if retry >= 0 {
		return rpcerr.TooMany(name, msg+"; try again later", time.Duration(retry)*time.Millisecond)
	}
	return nil
}
