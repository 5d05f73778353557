package auth

import (
	"context"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/go-redis/redis_rate/v10"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"
)

// RateLimits bound the attempts that guess passwords or mass-create
// accounts. They are counted in Redis, so all instances share them.
type RateLimits struct {
	// LoginFailuresPerAccount is how many wrong passwords one login name
	// may get per LoginWindow.
	LoginFailuresPerAccount int
	// LoginFailuresPerAddress is how many failed logins one client address
	// may make per LoginWindow, across all accounts.
	LoginFailuresPerAddress int
	// LoginWindow is the window of both login limits.
	LoginWindow time.Duration
	// RegistrationsPerAddress is how many accounts one client address may
	// create per RegistrationWindow.
	RegistrationsPerAddress int
	// RegistrationWindow is the window of the registration limit.
	RegistrationWindow time.Duration
}

// DefaultRateLimits are the limits a server runs with unless configured.
var DefaultRateLimits = RateLimits{
	LoginFailuresPerAccount: 10,
	LoginFailuresPerAddress: 50,
	LoginWindow:             15 * time.Minute,
	RegistrationsPerAddress: 10,
	RegistrationWindow:      time.Hour,
}

type limiter struct {
	l      *redis_rate.Limiter
	prefix string
	cfg    RateLimits
}

func limit(n int, window time.Duration) redis_rate.Limit {
	return redis_rate.Limit{Rate: n, Burst: n, Period: window}
}

func (l *limiter) accountKey(login string) string {
	return l.prefix + "login-account:" + strings.ToLower(login)
}

func (l *limiter) loginAddressKey(addr string) string { return l.prefix + "login-address:" + addr }

func (l *limiter) registerAddressKey(addr string) string {
	return l.prefix + "register-address:" + addr
}

// checkLogin refuses a login attempt when the account or the address has
// used up its failures, without counting the attempt itself.
func (l *limiter) checkLogin(ctx context.Context, login, addr string) error {
	if err := l.peek(ctx, l.accountKey(login), limit(l.cfg.LoginFailuresPerAccount, l.cfg.LoginWindow)); err != nil {
		return err
	}
	return l.peek(ctx, l.loginAddressKey(addr), limit(l.cfg.LoginFailuresPerAddress, l.cfg.LoginWindow))
}

// failedLogin counts a failed attempt against the account and the address.
func (l *limiter) failedLogin(ctx context.Context, login, addr string) error {
	if _, err := l.l.Allow(ctx, l.accountKey(login), limit(l.cfg.LoginFailuresPerAccount, l.cfg.LoginWindow)); err != nil {
		return fmt.Errorf("rate limit: %w", err)
	}
	if _, err := l.l.Allow(ctx, l.loginAddressKey(addr), limit(l.cfg.LoginFailuresPerAddress, l.cfg.LoginWindow)); err != nil {
		return fmt.Errorf("rate limit: %w", err)
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
		return tooMany("too many registrations from this address", res.RetryAfter)
	}
	return nil
}

// peek refuses when the key has no attempts left.
func (l *limiter) peek(ctx context.Context, key string, lim redis_rate.Limit) error {
	res, err := l.l.AllowN(ctx, key, lim, 0)
	if err != nil {
		return fmt.Errorf("rate limit: %w", err)
	}
	if res.Remaining >= 1 {
		return nil
	}
	// With nothing left, one attempt frees up one emission interval before
	// the limiter is back to full.
	retry := res.ResetAfter - time.Duration(lim.Burst-1)*(lim.Period/time.Duration(lim.Rate))
	return tooMany("too many failed logins; try again later", retry)
}

// tooMany is RESOURCE_EXHAUSTED with a google.rpc.RetryInfo detail and a
// Retry-After header, both saying when to try again.
func tooMany(msg string, retry time.Duration) error {
	retry = max(retry.Round(time.Second), time.Second)
	err := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("%s (retry after %s)", msg, retry))
	if d, derr := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)}); derr == nil {
		err.AddDetail(d)
	}
	err.Meta().Set("Retry-After", fmt.Sprint(int(retry.Seconds())))
	return err
}
