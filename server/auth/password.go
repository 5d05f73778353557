package auth

import (
	"context"
	"fmt"
	"runtime"

	"github.com/alexedwards/argon2id"
)

// PasswordParams are the Argon2id parameters for new hashes: OWASP's
// recommendation of 19 MiB of memory, 2 passes and 1 lane. Each hash records
// its own parameters, so raising these later leaves old hashes valid.
var PasswordParams = &argon2id.Params{
	Memory:      19 * 1024,
	Iterations:  2,
	Parallelism: 1,
	SaltLength:  16,
	KeyLength:   32,
}

// passwords hashes and verifies passwords, at most a few at a time, so that
// a burst of logins queues for the CPU instead of exhausting memory.
type passwords struct {
	params *argon2id.Params
	slots  chan struct{}
	// dummy is a hash of a random password, verified when a login names no
	// account, so that unknown logins take as long as wrong passwords.
	dummy string
}

func newPasswords(params *argon2id.Params) (*passwords, error) {
	p := &passwords{params: params, slots: make(chan struct{}, 2*runtime.GOMAXPROCS(0))}
	dummy, err := argon2id.CreateHash(newSessionID(), params)
	if err != nil {
		return nil, fmt.Errorf("dummy hash: %w", err)
	}
	p.dummy = dummy
	return p, nil
}

func (p *passwords) acquire(ctx context.Context) error {
	select {
	case p.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *passwords) release() { <-p.slots }

// hash returns the PHC-format Argon2id hash of password.
func (p *passwords) hash(ctx context.Context, password string) (string, error) {
	if err := p.acquire(ctx); err != nil {
		return "", err
	}
	defer p.release()
	h, err := argon2id.CreateHash(password, p.params)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return h, nil
}

// verify reports whether password matches hash. An empty hash stands for
// "no such account": the dummy hash is checked instead and false returned.
func (p *passwords) verify(ctx context.Context, password, hash string) (bool, error) {
	if err := p.acquire(ctx); err != nil {
		return false, err
	}
	defer p.release()
	if hash == "" {
		_, err := argon2id.ComparePasswordAndHash(password, p.dummy)
		return false, err
	}
	ok, err := argon2id.ComparePasswordAndHash(password, hash)
	if err != nil {
		return false, fmt.Errorf("verify password: %w", err)
	}
	return ok, nil
}
