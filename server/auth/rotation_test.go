package auth_test

import (
	"context"
	"crypto/ed25519"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/servertest"
)

// TestSigningKeyRotation walks the README's rotation procedure over
// instances that share their stores, alternating Connect and gRPC, and
// checks that nobody is logged out on the way: (1) every instance learns
// the new key as a verification key, (2) every instance signs with the new
// key and keeps the old one to verify, (3) after the session lifetime the
// old key goes, and with it only the sessions that did not refresh since.
func TestSigningKeyRotation(t *testing.T) {
	oldFile, oldKey := servertest.NewKeyFile(t)
	newFile, newKey := servertest.NewKeyFile(t)
	oldID, newID := keyring.ID(oldKey.Public().(ed25519.PublicKey)), keyring.ID(newKey.Public().(ed25519.PublicKey))
	instance := func(p servertest.Protocol, sign string, verify ...string) servertest.Clients {
		return servertest.NewClients(servertest.New(t, servertest.WithConfig(func(c *app.Config) {
			c.JWTKeyFile, c.JWTVerifyKeyFiles = sign, verify
		})), p)
	}
	connectP, grpcP := servertest.Protocols[0], servertest.Protocols[1]

	before := instance(connectP, oldFile)
	acc := servertest.Register(t, before.Auth, servertest.UniqueName("rotate"))
	if got := keyID(t, acc.Tokens.GetAccessToken()); got != oldID {
		t.Errorf("access token names key %q, want the signing key %q", got, oldID)
	}
	// Sessions that never refresh during the rotation.
	idleThrough, idleAfter := login(t, before, acc.ID), login(t, before, acc.ID)

	step1 := instance(grpcP, oldFile, newFile)
	step2 := instance(connectP, newFile, oldFile)

	t.Run("old key's tokens work on an instance that signs with the new key", func(t *testing.T) {
		getMe(t, step2, acc.Tokens.GetAccessToken())
		getMe(t, step2, idleThrough.GetAccessToken())
	})
	refreshed := refresh(t, step2, acc.Tokens.GetRefreshToken())
	t.Run("new tokens are signed with the new key", func(t *testing.T) {
		if got := keyID(t, refreshed.GetAccessToken()); got != newID {
			t.Errorf("access token names key %q, want the new key %q", got, newID)
		}
	})
	t.Run("an instance still on step 1 accepts them", func(t *testing.T) {
		getMe(t, step1, refreshed.GetAccessToken())
	})
	t.Run("an instance that skipped step 1 refuses them", func(t *testing.T) {
		_, err := before.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, refreshed.GetAccessToken()))
		servertest.WantCode(t, err, connect.CodeUnauthenticated)
	})
	// A refresh token of the new key, refreshed on an instance that still
	// signs with the old one, and back.
	again := refresh(t, step1, refreshed.GetRefreshToken())
	getMe(t, step2, again.GetAccessToken())
	latest := refresh(t, step2, again.GetRefreshToken())
	throughRefreshed := refresh(t, step2, idleThrough.GetRefreshToken())

	t.Run("tokens from before tokens named their key", func(t *testing.T) {
		legacy := forge(t, jwt.SigningMethodEdDSA, oldKey, acc.ID, latest.GetSessionId(), time.Now().Add(time.Minute))
		getMe(t, step2, legacy)
	})
	t.Run("a token names the key that signed it", func(t *testing.T) {
		withKID := func(kid any) string {
			claims := jwt.MapClaims{
				"iss": "parley", "sub": strconv.Itoa(int(acc.ID)), "sid": latest.GetSessionId(),
				"iat": time.Now().Unix(), "exp": time.Now().Add(time.Minute).Unix(),
			}
			tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
			tok.Header["kid"] = kid
			s, err := tok.SignedString(oldKey)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		getMe(t, step2, withKID(oldID))
		for name, kid := range map[string]any{"the new key's id": newID, "an unknown id": "AAAAAAAA", "not a string": 7} {
			_, err := step2.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, withKID(kid)))
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Errorf("signed by the old key, naming %s: GetMe = %v, want unauthenticated", name, err)
			}
		}
	})

	after := instance(grpcP, newFile)
	t.Run("after the old key goes, refreshed sessions live on", func(t *testing.T) {
		getMe(t, after, latest.GetAccessToken())
		getMe(t, after, throughRefreshed.GetAccessToken())
		getMe(t, after, refresh(t, after, latest.GetRefreshToken()).GetAccessToken())
	})
	t.Run("after the old key goes, sessions that never refreshed must sign in again", func(t *testing.T) {
		_, err := after.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, idleAfter.GetAccessToken()))
		servertest.WantCode(t, err, connect.CodeUnauthenticated)
		_, err = after.Auth.Refresh(context.Background(), connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: idleAfter.GetRefreshToken()}))
		servertest.WantCode(t, err, connect.CodeUnauthenticated)
		// The refusal changed nothing: an instance that still has the old
		// key refreshes the same token.
		getMe(t, step2, refresh(t, step2, idleAfter.GetRefreshToken()).GetAccessToken())
	})
}

// keyID returns the key an access token names in its header.
func keyID(t *testing.T, token string) string {
	t.Helper()
	tok, _, err := jwt.NewParser().ParseUnverified(token, jwt.MapClaims{})
	if err != nil {
		t.Fatalf("parse access token: %v", err)
	}
	kid, _ := tok.Header["kid"].(string)
	return kid
}

func getMe(t *testing.T, c servertest.Clients, token string) {
	t.Helper()
	if _, err := c.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, token)); err != nil {
		t.Fatalf("GetMe: %v", err)
	}
}

func refresh(t *testing.T, c servertest.Clients, token string) *parleyv1.Tokens {
	t.Helper()
	res, err := c.Auth.Refresh(context.Background(), connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: token}))
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	return res.Msg.GetTokens()
}
