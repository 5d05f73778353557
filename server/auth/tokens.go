package auth

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/golang-jwt/jwt/v5"
	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/parley-chat/parley/server/keyring"
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

// tokens signs and verifies access tokens and refresh tokens. Both name
// the key that signed them (the JWT header's "kid", a field of the refresh
// token), so tokens signed by a retired key of the ring still verify.
type tokens struct {
	keys *keyring.Ring
	// legacy verifies access tokens from before they named their key.
	legacy     jwt.VerificationKeySet
	refreshKey *keyring.MACs
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

func newTokens(keys *keyring.Ring, accessTTL time.Duration, now func() time.Time) (*tokens, error) {
	refreshKey, err := keys.MACs("parley refresh token mac")
	if err != nil {
		return nil, fmt.Errorf("refresh key: %w", err)
	}
	var legacy jwt.VerificationKeySet
	for _, k := range keys.Keys() {
		legacy.Keys = append(legacy.Keys, k.Public())
	}
	verified, err := lru.New[string, verifiedToken](verifiedCacheSize)
	if err != nil {
		return nil, fmt.Errorf("token cache: %w", err)
	}
	return &tokens{
		verified:   verified,
		keys:       keys,
		legacy:     legacy,
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
			// One token, one spelling: base64 with stray low bits in its
			// last character would otherwise verify as the same token.
			jwt.WithStrictDecoding(),
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
	key := t.keys.Signing()
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	tok.Header["kid"] = key.ID
	s, err := tok.SignedString(key.Private)
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
	if !keyring.TokenChars(token) {
		return verifiedToken{}, fmt.Errorf("%w: not a token's characters", errBadToken)
	}
	if v, ok := t.verified.Get(token); ok {
		if !t.now().Before(v.expires.Add(leeway)) {
			return verifiedToken{}, fmt.Errorf("%w: expired", errBadToken)
		}
		return v, nil
	}
	var c accessClaims
	if _, err := t.parser.ParseWithClaims(token, &c, t.verificationKey); err != nil {
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

// verificationKey picks the public key that verifies an access token: the
// one its "kid" names, or for a token from before tokens named their key,
// each key of the ring in turn.
func (t *tokens) verificationKey(tok *jwt.Token) (any, error) {
	kid, ok := tok.Header["kid"]
	if !ok {
		return t.legacy, nil
	}
	id, _ := kid.(string)
	k, ok := t.keys.Lookup(id)
	if !ok {
		return nil, fmt.Errorf("unknown signing key %q", kid)
	}
	return k.Public(), nil
}

// refreshToken is the parsed form of an opaque refresh token,
// "<user>.<session>.<generation>.<key>.<mac>". The MAC, by the key the
// token names, binds the user, session and generation to the server's key
// and the session's salt, which only Redis holds; each Refresh moves the
// session to the next generation, so a token of an older generation that
// still verifies is one that was used before. Tokens issued before they
// named their key have no key part.
type refreshToken struct {
	userID     int
	sessionID  string
	generation int64
	keyID      string
	mac        []byte
}

func refreshPayload(userID int, sessionID string, generation int64, salt string) []byte {
	return fmt.Appendf(nil, "%d.%s.%d.%s", userID, sessionID, generation, salt)
}

func (t *tokens) issueRefresh(userID int, sessionID string, generation int64, salt string) string {
	kid, mac := t.refreshKey.Sign(refreshPayload(userID, sessionID, generation, salt))
	return fmt.Sprintf("%d.%s.%d.%s.%s", userID, sessionID, generation, kid, base64.RawURLEncoding.EncodeToString(mac))
}

// parseRefresh parses a refresh token's parts; verifyRefresh checks its
// MAC.
func parseRefresh(s string) (refreshToken, bool) {
	kid, parts, ok := keyring.SplitToken(s, 4, 3)
	if !ok {
		return refreshToken{}, false
	}
	uid, err1 := strconv.Atoi(parts[0])
	gen, err2 := strconv.ParseInt(parts[2], 10, 64)
	mac, err3 := base64.RawURLEncoding.Strict().DecodeString(parts[3])
	if err1 != nil || err2 != nil || err3 != nil || uid <= 0 || gen < 0 || !validSessionID(parts[1]) ||
		// One token, one spelling: no "+1" or "01" for 1.
		strconv.Itoa(uid) != parts[0] || strconv.FormatInt(gen, 10) != parts[2] {
		return refreshToken{}, false
	}
	return refreshToken{userID: uid, sessionID: parts[1], generation: gen, keyID: kid, mac: mac}, true
}

// verifyRefresh reports whether the token was issued by this server, with
// a key of its ring, for the session with the given salt.
func (t *tokens) verifyRefresh(r refreshToken, salt string) bool {
	return t.refreshKey.Verify(r.keyID, refreshPayload(r.userID, r.sessionID, r.generation, salt), r.mac)
}
