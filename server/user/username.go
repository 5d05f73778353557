package user

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"connectrpc.com/connect"
	"golang.org/x/text/secure/bidirule"
	"golang.org/x/text/secure/precis"
	"golang.org/x/text/unicode/bidi"
	"golang.org/x/text/unicode/norm"

	"github.com/parley-chat/parley/ent"
	"github.com/parley-chat/parley/ent/schema"
	"github.com/parley-chat/parley/ent/user"
)

// A username has two forms. Its display form is what the user typed with
// full-width and half-width characters mapped to their usual width and
// composed (NFC), as PRECIS UsernameCasePreserved (RFC 8265) has it, so
// "ａlice" is shown as "alice". Its key, in the users.username_key column
// under a unique index, is the display form case-folded as well (PRECIS
// UsernameCaseMapped), so
// "Alice", "ＡＬＩＣＥ" and "alice" are one name, and so are the Kelvin sign
// "K" and "k". Login and search compare keys.
//
// A new name must also be in one script, as UTS #39's "highly restrictive"
// level defines it: characters of the Common and Inherited scripts (digits,
// '.', '_', '-', combining marks) go with any script; otherwise every letter
// is from one script, or from Latin with Han, Hiragana and Katakana
// (Japanese), Latin with Han and Bopomofo (Chinese), or Latin with Han and
// Hangul (Korean). That refuses "аlice" with a Cyrillic "а". A name wholly
// in another script that looks like a Latin one ("аре", all Cyrillic,
// against "ape") is still possible: x/text has no confusables table.

// The PRECIS profiles of RFC 8265 without x/text's Bidi Rule: x/text
// applies it to every string with a character beyond ASCII (golang/go
// #17383), which refuses names such as "2ème" or "_josé", while the RFC
// applies it only to strings with right-to-left characters; rtlValid does
// that.
var (
	// usernameDisplay is UsernameCasePreserved: width mapping and NFC.
	usernameDisplay = precis.NewIdentifier(precis.FoldWidth, precis.Norm(norm.NFC))
	// usernameFold is UsernameCaseMapped: usernameDisplay and lower case.
	usernameFold = precis.NewIdentifier(precis.FoldWidth, precis.LowerCase(), precis.Norm(norm.NFC))
)

// rtlValid applies RFC 8265's directionality rule: a string with
// right-to-left characters must pass the Bidi Rule of RFC 5893.
func rtlValid(s string) bool {
	for _, r := range s {
		switch p, _ := bidi.LookupRune(r); p.Class() {
		case bidi.R, bidi.AL, bidi.AN:
			return bidirule.ValidString(s)
		}
	}
	return true
}

// errUsernameForm is the answer to a name PRECIS does not accept.
var errUsernameForm = connect.NewError(connect.CodeInvalidArgument,
	errors.New("username: not a valid username (letters, digits, '.', '_' and '-'; no symbols, spaces or control characters)"))

// normalizeUsername returns the display form and the key of a new
// username, or an InvalidArgument error saying why it is refused.
func normalizeUsername(name string) (display, key string, err error) {
	display, err = usernameDisplay.String(name)
	if err != nil || !rtlValid(display) {
		return "", "", errUsernameForm
	}
	if r, _ := utf8.DecodeRuneInString(display); unicode.Is(unicode.M, r) {
		// A combining mark belongs to the letter before it.
		return "", "", errUsernameForm
	}
	if n := utf8.RuneCountInString(display); n > schema.UsernameMaxLen {
		// NFC writes a few letters as two or three characters ("क़",
		// "שּׁ"), so a name within the request's limit can outgrow the
		// column.
		return "", "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(
			"username: %d characters once normalised; at most %d", n, schema.UsernameMaxLen))
	}
	key, err = usernameFold.String(name)
	if err != nil || key == "" {
		return "", "", errUsernameForm
	}
	if scripts := mixedScripts(display); scripts != nil {
		return "", "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(
			"username: mixes the %s scripts; use the letters of one script", strings.Join(scripts, " and ")))
	}
	return display, key, nil
}

// usernameKey is the key to look a name up by: that of an existing
// account, which may predate the rules, or what a user typed to log in or
// search. Names that PRECIS does not accept fall back to lower case, which
// is what accounts were unique by before keys.
func usernameKey(name string) string {
	if key, err := usernameFold.String(name); err == nil {
		return key
	}
	return strings.ToLower(name)
}

// restrictiveSets are the script combinations UTS #39 (section 5.2,
// "Highly Restrictive") allows beside a single script.
var restrictiveSets = [][]string{
	{"Latin", "Han", "Hiragana", "Katakana"},
	{"Latin", "Han", "Bopomofo"},
	{"Latin", "Han", "Hangul"},
}

// mixedScripts returns the scripts of s, sorted, when they are more than
// one script allows and not one of restrictiveSets; nil when s passes.
func mixedScripts(s string) []string {
	var scripts []string
	for _, r := range s {
		name := scriptOf(r)
		if name == "" || name == "Common" || name == "Inherited" || slices.Contains(scripts, name) {
			continue
		}
		scripts = append(scripts, name)
	}
	if len(scripts) <= 1 {
		return nil
	}
	for _, set := range restrictiveSets {
		if allIn(scripts, set) {
			return nil
		}
	}
	slices.Sort(scripts)
	return scripts
}

func allIn(names, set []string) bool {
	for _, n := range names {
		if !slices.Contains(set, n) {
			return false
		}
	}
	return true
}

// scriptNames are the names of unicode.Scripts, sorted, so that scriptOf
// looks them up in a fixed order.
var scriptNames = func() []string {
	names := make([]string, 0, len(unicode.Scripts))
	for name := range unicode.Scripts {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}()

// scriptOf names the Unicode script of r ("" when it has none). Latin,
// Common and Inherited, most names' scripts, are tried first.
func scriptOf(r rune) string {
	for _, name := range [...]string{"Latin", "Common", "Inherited"} {
		if unicode.Is(unicode.Scripts[name], r) {
			return name
		}
	}
	for _, name := range scriptNames {
		if unicode.Is(unicode.Scripts[name], r) {
			return name
		}
	}
	return ""
}

// usernameCollision is an account whose name has the same key as an older
// account's: both keep working, and CheckUsernames lists them.
type usernameCollision struct {
	UserID, HolderID int
	Key              string
}

// collisionMark separates, in the key of an account whose name collides
// with an older account's, the name's key from the account's id: "erin#7"
// for user 7, "ｅrin", beside user 3, "erin". No username has a '#', so no
// name can take such a key; search still finds it by its prefix.
const collisionMark = "#"

// CheckUsernames gives every account without a username key its key: the
// accounts created before keys existed, or by an older instance during a
// rolling upgrade. An account whose name's key another account already
// holds (names that only differ by case or width, such as "ｅrin" beside
// "erin") keeps its name and its sign-in, gets its key marked with its id
// (collisionMark), and is logged; such accounts are logged again at every
// start, until renamed. It returns how many there are.
func (s *Service) CheckUsernames(ctx context.Context) (int, error) {
	if err := s.store.backfillUsernameKeys(ctx); err != nil {
		return 0, err
	}
	collisions, err := s.store.usernameCollisions(ctx)
	if err != nil {
		return 0, err
	}
	for _, c := range collisions {
		s.log.Warn("username collides with an older account's after normalisation; both keep working",
			"user_id", c.UserID, "holder_user_id", c.HolderID, "key", c.Key)
	}
	return len(collisions), nil
}

// backfillBatch is how many accounts without a key are read at a time.
const backfillBatch = 500

func (s *store) backfillUsernameKeys(ctx context.Context) error {
	for {
		users, err := s.db.Ent.User.Query().
			Where(user.UsernameKeyIsNil()).
			Order(ent.Asc(user.FieldID)).Limit(backfillBatch).
			Select(user.FieldID, user.FieldUsername).All(ctx)
		if err != nil {
			return fmt.Errorf("read usernames: %w", err)
		}
		for _, u := range users {
			key := usernameKey(u.Username)
			err := s.db.Ent.User.Update().Where(user.ID(u.ID), user.UsernameKeyIsNil()).SetUsernameKey(key).Exec(ctx)
			if ent.IsConstraintError(err) {
				// An older account, or a new one, holds the key.
				key += collisionMark + strconv.Itoa(u.ID)
				err = s.db.Ent.User.Update().Where(user.ID(u.ID), user.UsernameKeyIsNil()).SetUsernameKey(key).Exec(ctx)
			}
			if err != nil {
				return fmt.Errorf("set username key: %w", err)
			}
		}
		if len(users) < backfillBatch {
			return nil
		}
	}
}

// usernameCollisions lists the accounts whose key is marked as colliding,
// with the account that holds the name's key.
func (s *store) usernameCollisions(ctx context.Context) ([]usernameCollision, error) {
	users, err := s.db.Ent.User.Query().
		Where(user.UsernameKeyContains(collisionMark)).
		Order(ent.Asc(user.FieldID)).
		Select(user.FieldID, user.FieldUsernameKey).All(ctx)
	if err != nil {
		return nil, fmt.Errorf("read username collisions: %w", err)
	}
	out := make([]usernameCollision, 0, len(users))
	for _, u := range users {
		key, _, _ := strings.Cut(*u.UsernameKey, collisionMark)
		c := usernameCollision{UserID: u.ID, Key: key}
		holder, err := s.db.Ent.User.Query().Where(user.UsernameKey(key)).OnlyID(ctx)
		switch {
		case err == nil:
			c.HolderID = holder
		case !ent.IsNotFound(err): // the holder was renamed or deleted since: 0
			return nil, fmt.Errorf("read username key: %w", err)
		}
		out = append(out, c)
	}
	return out, nil
}
