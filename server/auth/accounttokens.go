package auth

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"

	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/mail"
)

// A verification token is "<user>.<expires>.<nonce>.<key>.<mac>": the MAC,
// by the key the token names, covers the user, the expiry (Unix seconds),
// the nonce and the address it was mailed to (which the token does not
// carry: VerifyEmail tries the account's current and pending addresses).
// Redis keeps the user's last nonce until it is used, so a token works
// once and only the last one mailed works.
type verifyToken struct {
	userID  int
	expires int64
	nonce   string
	keyID   string
	mac     []byte
}

func verifyPayload(t verifyToken, email string) []byte {
	return fmt.Appendf(nil, "%d.%d.%s.%s", t.userID, t.expires, t.nonce, strings.ToLower(email))
}

func (s *AccountService) verifyKey(userID int) string {
	return fmt.Sprintf("%s{u:%d}:email-verify", s.auth.cfg.RedisPrefix, userID)
}

// newVerifyToken makes a token for the user's address email and records
// its nonce, which replaces the user's earlier one.
func (s *AccountService) newVerifyToken(ctx context.Context, userID int, email string) (string, error) {
	t := verifyToken{
		userID:  userID,
		expires: s.auth.cfg.Now().Add(VerifyTokenTTL).Unix(),
		nonce:   newSessionID(),
	}
	t.keyID, t.mac = s.verify.Sign(verifyPayload(t, email))
	if err := s.rdb.Set(ctx, s.verifyKey(userID), t.nonce, VerifyTokenTTL).Err(); err != nil {
		return "", fmt.Errorf("store verification nonce: %w", err)
	}
	return t.String(), nil
}

// cancelEmailChange forgets the user's pending address, if any, and its
// verification token (the last one mailed). Without one, a token mailed
// to the account's own address stays good.
func (s *AccountService) cancelEmailChange(ctx context.Context, userID int) error {
	a, err := s.accounts.AccountEmail(ctx, userID)
	if err != nil {
		return fmt.Errorf("read the pending address: %w", err)
	}
	if a.Pending == "" {
		return nil
	}
	if err := s.rdb.Del(ctx, s.verifyKey(userID)).Err(); err != nil {
		return fmt.Errorf("forget the verification token: %w", err)
	}
	if err := s.accounts.ClearPendingEmail(ctx, userID); err != nil {
		return fmt.Errorf("forget the pending address: %w", err)
	}
	return nil
}

// String formats the token as parseVerifyToken reads it.
func (t verifyToken) String() string {
	return fmt.Sprintf("%d.%d.%s.%s.%s", t.userID, t.expires, t.nonce, t.keyID, base64.RawURLEncoding.EncodeToString(t.mac))
}

// parseVerifyToken parses a token's parts; VerifyEmail checks its MAC.
func parseVerifyToken(s string) (verifyToken, bool) {
	kid, parts, ok := keyring.SplitToken(s, 4, 3)
	if !ok || kid == "" {
		return verifyToken{}, false
	}
	uid, err1 := strconv.Atoi(parts[0])
	exp, err2 := strconv.ParseInt(parts[1], 10, 64)
	mac, err3 := base64.RawURLEncoding.Strict().DecodeString(parts[3])
	if err1 != nil || err2 != nil || err3 != nil || uid <= 0 || !validSessionID(parts[2]) ||
		strconv.Itoa(uid) != parts[0] || strconv.FormatInt(exp, 10) != parts[1] {
		return verifyToken{}, false
	}
	return verifyToken{userID: uid, expires: exp, nonce: parts[2], keyID: kid, mac: mac}, true
}

// compareAndDelete deletes KEYS[1] if it holds ARGV[1], and says whether
// it did.
var compareAndDelete = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	redis.call('DEL', KEYS[1])
	return 1
end
return 0`)

// useVerifyToken uses up the token's nonce; false when it is not the
// user's current one (used, superseded or expired).
func (s *AccountService) useVerifyToken(ctx context.Context, t verifyToken) (bool, error) {
	n, err := compareAndDelete.Run(ctx, s.rdb, []string{s.verifyKey(t.userID)}, t.nonce).Int()
	if err != nil {
		return false, fmt.Errorf("use verification token: %w", err)
	}
	return n == 1, nil
}

// A reset code is 8 digits. Redis keeps, under the user's key, its MAC
// (not the code: 10^8 codes are quickly tried against a plain hash), its
// expiry by the service's clock, and the wrong tries so far; the key
// also expires in Redis, for clean-up.
func (s *AccountService) resetKey(userID int) string {
	return fmt.Sprintf("%s{u:%d}:password-reset", s.auth.cfg.RedisPrefix, userID)
}

// resetMAC is what Redis keeps of a code. Codes are checked with the
// signing key: a key rotation ends the codes of the last 15 minutes.
func (s *AccountService) resetMAC(userID int, code string) string {
	_, mac := s.resets.Sign(fmt.Appendf(nil, "%d.%s", userID, code))
	return hex.EncodeToString(mac)
}

// newResetCode makes the user's reset code, which replaces any earlier
// one.
func (s *AccountService) newResetCode(ctx context.Context, userID int) (string, error) {
	n, err := rand.Int(rand.Reader, big.NewInt(100_000_000))
	if err != nil {
		return "", fmt.Errorf("reset code: %w", err)
	}
	code := fmt.Sprintf("%08d", n.Int64())
	key := s.resetKey(userID)
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, key)
		p.HSet(ctx, key, "mac", s.resetMAC(userID, code), "expires", s.auth.cfg.Now().Add(ResetCodeTTL).UnixMilli(), "tries", 0)
		p.Expire(ctx, key, ResetCodeTTL)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("store reset code: %w", err)
	}
	return code, nil
}

// claimResetCode checks a code and, when it is the current one, claims it
// for the reset that uses it, which then ends the claim (settleResetCode):
// used up, or left for a retry. ARGV are the code's MAC, the time (Unix
// milliseconds), the number of wrong tries that end the code and when
// the claim ends. It answers 1 for a claim, 2 for a code that another
// reset has claimed, 0 for a wrong or expired code.
var claimResetCode = redis.NewScript(`
local c = redis.call('HMGET', KEYS[1], 'mac', 'expires', 'claimed')
if not c[1] then return 0 end
local now = tonumber(ARGV[2])
if now >= tonumber(c[2]) then
	redis.call('DEL', KEYS[1])
	return 0
end
if c[1] == ARGV[1] then
	if c[3] and tonumber(c[3]) > now then return 2 end
	redis.call('HSET', KEYS[1], 'claimed', ARGV[4])
	return 1
end
if redis.call('HINCRBY', KEYS[1], 'tries', 1) >= tonumber(ARGV[3]) then
	redis.call('DEL', KEYS[1])
end
return 0`)

// settleResetCode ends a claim on a code, if the code still holds it (a
// newer code replaces the claimed one): ARGV[1] is the claim, ARGV[2]
// "used" to use the code up, anything else to leave it for a retry.
var settleResetCode = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'claimed') ~= ARGV[1] then return 0 end
if ARGV[2] == 'used' then
	redis.call('DEL', KEYS[1])
else
	redis.call('HDEL', KEYS[1], 'claimed')
end
return 1`)

// resetClaimTTL bounds a reset's claim on its code: the code of a reset
// that stopped half-way without giving it back (a crash) works again
// after it.
const resetClaimTTL = time.Minute

var errResetUnderWay = connect.NewError(connect.CodeAborted, errors.New("a password reset with this code is under way; try again in a minute"))

// resetClaim is a reset's claim on the user's code.
type resetClaim struct {
	key, until string
}

// claimResetCode reports whether code is the user's current reset code,
// and claims it for the caller if so; a wrong one counts towards ending
// it, and one another reset has claimed is errResetUnderWay.
func (s *AccountService) claimResetCode(ctx context.Context, userID int, code string) (resetClaim, bool, error) {
	now := s.auth.cfg.Now()
	claim := resetClaim{key: s.resetKey(userID), until: strconv.FormatInt(now.Add(resetClaimTTL).UnixMilli(), 10)}
	n, err := claimResetCode.Run(ctx, s.rdb, []string{claim.key},
		s.resetMAC(userID, code), now.UnixMilli(), ResetCodeTries, claim.until).Int()
	switch {
	case err != nil:
		return claim, false, fmt.Errorf("claim reset code: %w", err)
	case n == 2:
		return claim, false, errResetUnderWay
	}
	return claim, n == 1, nil
}

// settleResetCode ends the claim: the code is used up if used, and works
// again otherwise.
func (s *AccountService) settleResetCode(ctx context.Context, claim resetClaim, used bool) error {
	how := "retry"
	if used {
		how = "used"
	}
	if err := settleResetCode.Run(ctx, s.rdb, []string{claim.key}, claim.until, how).Err(); err != nil {
		return fmt.Errorf("settle reset code: %w", err)
	}
	return nil
}

func resetMail(to, code string) mail.Message {
	return mail.Message{
		To:      to,
		Subject: "Your Parley password reset code",
		Text: "Someone, hopefully you, asked to reset the password of the Parley account\n" +
			"with this email address. The code is:\n\n" +
			"    " + code + "\n\n" +
			"It works once, within 15 minutes. Using it signs the account out\n" +
			"everywhere. If you did not ask for it, ignore this mail.\n",
	}
}

func verifyMail(to, token string) mail.Message {
	return mail.Message{
		To:      to,
		Subject: "Verify your email address for Parley",
		Text: "To verify this address for your Parley account, enter this code in\n" +
			"Parley (AccountService.VerifyEmail):\n\n" +
			"    " + token + "\n\n" +
			"It works once, within 24 hours; a newer code replaces it. If you did\n" +
			"not ask for it, ignore this mail.\n",
	}
}

func changeNoticeMail(to, newEmail string) mail.Message {
	return mail.Message{
		To:      to,
		Subject: "Your Parley email address is being changed",
		Text: "Someone signed in to your Parley account asked to change its email\n" +
			"address to " + newEmail + ". The change takes effect once that address\n" +
			"is verified. If it was not you, change your password now.\n",
	}
}
