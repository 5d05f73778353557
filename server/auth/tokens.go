package auth

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	lru "github.com/hashicorp/golang-lru/v2"
)

const issuer = "parley"

// leeway is the clock skew allowed when checking a token's times.
const leeway = 5 * time.Second

// accessClaims are the claims of an access token.
type accessClaims struct {
	jwt.RegisteredClaims
	// SessionID names the session in Redis.
	SessionID string `json:"sid"`
}

// tokens signs and verifies access tokens and refresh tokens.
type tokens struct {
	key        ed25519.PrivateKey
	refreshKey []byte
	accessTTL  time.Duration
	now        func() time.Time
	parser     *jwt.Parser
	// verified remembers tokens whose signature checked out, so a client's
	// every call does not pay for an Ed25519 verification; expiry is still
	// checked on each use, and the session in Redis always is.
	verified *lru.Cache[string, verifiedToken]
}

// verifiedToken is what a checked access token says.
type verifiedToken struct {
	userID    int
	sessionID string
	expires   time.Time
}

// verifiedCacheSize bounds the verified-token cache: about 200 bytes a
// token, so some 10 MB at most.
const verifiedCacheSize = 50_000

func newTokens(key ed25519.PrivateKey, accessTTL time.Duration, now func() time.Time) (*tokens, error) {
	refreshKey, err := hkdf.Key(sha256.New, key.Seed(), nil, "parley refresh token mac", 32)
	if err != nil {
		return nil, fmt.Errorf("refresh key: %w", err)
	}
	verified, err := lru.New[string, verifiedToken](verifiedCacheSize)
	if err != nil {
		return nil, fmt.Errorf("token cache: %w", err)
	}
	return &tokens{
		verified:   verified,
		key:        key,
		refreshKey: refreshKey,
		accessTTL:  accessTTL,
		now:        now,
		parser: jwt.NewParser(
			// The algorithm is pinned: "none", HMAC and RSA tokens are
			// refused whatever their header says.
			jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}),
			jwt.WithIssuer(issuer),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithLeeway(leeway),
			jwt.WithTimeFunc(now),
		),
	}, nil
}

// issueAccess signs an access token for the user's session.
func (t *tokens) issueAccess(userID int, sessionID string) (string, time.Time, error) {
	now := t.now()
	// The claim holds whole seconds: the expiry clients are told is the
	// one the server enforces (live streams end at it).
	exp := jwt.NewNumericDate(now.Add(t.accessTTL))
	c := accessClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    issuer,
			Subject:   strconv.Itoa(userID),
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: exp,
		},
		SessionID: sessionID,
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c).SignedString(t.key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign access token: %w", err)
	}
	return s, exp.Time, nil
}

// errBadToken is returned for any token that does not verify; the detail
// stays in the server.
var errBadToken = errors.New("invalid or expired access token")

// verifyAccess checks an access token's signature, algorithm, issuer and
// expiry, and returns the user and session it names and when it expires.
func (t *tokens) verifyAccess(token string) (verifiedToken, error) {
	if v, ok := t.verified.Get(token); ok {
		if !t.now().Before(v.expires.Add(leeway)) {
			return verifiedToken{}, fmt.Errorf("%w: expired", errBadToken)
		}
		return v, nil
	}
	var c accessClaims
	if _, err := t.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) {
		return t.key.Public(), nil
	}); err != nil {
		return verifiedToken{}, fmt.Errorf("%w: %w", errBadToken, err)
	}
	userID, err := strconv.Atoi(c.Subject)
	if err != nil || userID <= 0 || c.SessionID == "" {
		return verifiedToken{}, fmt.Errorf("%w: bad subject or session", errBadToken)
	}
	v := verifiedToken{userID: userID, sessionID: c.SessionID, expires: c.ExpiresAt.Time}
	t.verified.Add(token, v)
	return v, nil
}

// refreshToken is the parsed form of an opaque refresh token,
// "<user>.<session>.<generation>.<mac>". The MAC binds the first three parts
// to the server's key and the session's salt, which only Redis holds; each
// Refresh moves the session to the next generation, so a token of an older
// generation that still verifies is one that was used before.
type refreshToken struct {
	userID     int
	sessionID  string
	generation int64
	mac        []byte
}

func (t *tokens) refreshMAC(userID int, sessionID string, generation int64, salt string) []byte {
	m := hmac.New(sha256.New, t.refreshKey)
	fmt.Fprintf(m, "%d.%s.%d.%s", userID, sessionID, generation, salt)
	return m.Sum(nil)
}

func (t *tokens) issueRefresh(userID int, sessionID string, generation int64, salt string) string {
	mac := t.refreshMAC(userID, sessionID, generation, salt)
	return fmt.Sprintf("%d.%s.%d.%s", userID, sessionID, generation, base64.RawURLEncoding.EncodeToString(mac))
}

func parseRefresh(s string) (refreshToken, bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return refreshToken{}, false
	}
	uid, err1 := strconv.Atoi(parts[0])
	gen, err2 := strconv.ParseInt(parts[2], 10, 64)
	mac, err3 := base64.RawURLEncoding.DecodeString(parts[3])
	if err1 != nil || err2 != nil || err3 != nil || uid <= 0 || gen < 0 || !validSessionID(parts[1]) {
		return refreshToken{}, false
	}
	return refreshToken{userID: uid, sessionID: parts[1], generation: gen, mac: mac}, true
}

// verifyRefresh reports whether the token was issued by this server for the
// session with the given salt.
func (t *tokens) verifyRefresh(r refreshToken, salt string) bool {
	return hmac.Equal(r.mac, t.refreshMAC(r.userID, r.sessionID, r.generation, salt))
}
