package user

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"entgo.io/ent/dialect"
	"entgo.io/ent/dialect/sql"

	"github.com/parley-chat/parley/ent"
	"github.com/parley-chat/parley/ent/avatar"
	"github.com/parley-chat/parley/ent/predicate"
	"github.com/parley-chat/parley/ent/user"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/sqldb"
)

// store reads and writes users, profiles and avatars in PostgreSQL.
type store struct {
	db  *sqldb.DB
	now func() time.Time
}

var (
	errUsernameTaken = connect.NewError(connect.CodeAlreadyExists, errors.New("username is taken"))
	errEmailTaken    = connect.NewError(connect.CodeAlreadyExists, errors.New("email is already registered"))
)

// uniqueViolation names the taken field of a unique-constraint error.
func uniqueViolation(err error) error {
	if !ent.IsConstraintError(err) {
		return err
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "username"):
		return errUsernameTaken
	case strings.Contains(msg, "email"):
		return errEmailTaken
	}
	return err
}

// lowerEQ matches rows whose column equals v regardless of case.
func lowerEQ(column, v string) predicate.User {
	return func(s *sql.Selector) {
		s.Where(sql.P(func(b *sql.Builder) {
			b.WriteString("lower(").Ident(s.C(column)).WriteString(") = lower(").Arg(v).WriteString(")")
		}))
	}
}

// withTx runs fn in a transaction, committing when it returns nil.
func (s *store) withTx(ctx context.Context, fn func(tx *ent.Tx) error) error {
	tx, err := s.db.Ent.Tx(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		return errors.Join(err, tx.Rollback())
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// lockUser serializes the transactions that change one user's avatars.
// SQLite needs nothing here: its transactions take the write lock at once.
func (s *store) lockUser(ctx context.Context, tx *ent.Tx, userID int) error {
	if s.db.Dialect != dialect.Postgres {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE`, userID); err != nil {
		return fmt.Errorf("lock user: %w", err)
	}
	return nil
}

func (s *store) createAccount(ctx context.Context, a auth.NewAccount) (int, error) {
	name, key, err := normalizeUsername(a.Username)
	if err != nil {
		return 0, err
	}
	var id int
	err = s.withTx(ctx, func(tx *ent.Tx) error {
		u, err := tx.User.Create().
			SetUsername(name).
			SetUsernameKey(key).
			SetEmail(a.Email).
			SetPasswordHash(a.PasswordHash).
			SetNillablePhoneNumber(a.PhoneNumber).
			Save(ctx)
		if err != nil {
			return uniqueViolation(err)
		}
		if err := s.checkName(ctx, tx, u.ID, key); err != nil {
			return err
		}
		now := s.now()
		if err := tx.Profile.Create().SetUser(u).SetCreatedAt(now).SetLastLogin(now).Exec(ctx); err != nil {
			return fmt.Errorf("create profile: %w", err)
		}
		if err := tx.Avatar.Create().
			SetUserID(u.ID).
			SetAvatarURL(newIdenticonURL()).
			SetIsRandom(true).
			SetIsActive(true).
			SetUploadedAt(now).
			Exec(ctx); err != nil {
			return fmt.Errorf("create avatar: %w", err)
		}
		id = u.ID
		return nil
	})
	return id, err
}

// lookupLogin finds the account a login names: an email in any case, or a
// username by its key. A name typed as it is registered, in any case, is
// tried first, so that an older account whose name collides with another's
// key (and so has none) still signs in.
func (s *store) lookupLogin(ctx context.Context, login string) (int, string, error) {
	where := []predicate.User{lowerEQ(user.FieldEmail, login)}
	if !strings.Contains(login, "@") {
		where = []predicate.User{lowerEQ(user.FieldUsername, login), user.UsernameKey(usernameKey(login))}
	}
	for _, p := range where {
		u, err := s.db.Ent.User.Query().Where(p, notDeleted()).Select(user.FieldID, user.FieldPasswordHash).Only(ctx)
		if ent.IsNotFound(err) {
			continue
		}
		if err != nil {
			return 0, "", fmt.Errorf("lookup login: %w", err)
		}
		return u.ID, u.PasswordHash, nil
	}
	return 0, "", nil
}

func (s *store) recordLogin(ctx context.Context, userID int) error {
	return s.db.Ent.Profile.UpdateOneID(userID).SetLastLogin(s.now()).Exec(ctx)
}

// withDetails loads a user's profile and active avatar along with it.
func withDetails(q *ent.UserQuery) *ent.UserQuery {
	return q.WithProfile().WithAvatars(func(aq *ent.AvatarQuery) {
		aq.Where(avatar.IsActive(true))
	})
}

// get returns the user, unless its deletion began (ent's not-found error).
func (s *store) get(ctx context.Context, userID int) (*ent.User, error) {
	return withDetails(s.db.Ent.User.Query().Where(user.ID(userID), notDeleted())).Only(ctx)
}

// profileUpdate is a partial update: nil fields stay as they are, and an
// empty phone number or description clears it.
type profileUpdate struct {
	Username, PhoneNumber, Description *string
}

func (s *store) updateProfile(ctx context.Context, userID int, up profileUpdate) error {
	var name, key string
	if up.Username != nil {
		var err error
		if name, key, err = normalizeUsername(*up.Username); err != nil {
			return err
		}
	}
	return s.withTx(ctx, func(tx *ent.Tx) error {
		uu := tx.User.UpdateOneID(userID)
		if up.Username != nil {
			uu.SetUsername(name).SetUsernameKey(key)
		}
		if up.PhoneNumber != nil {
			if *up.PhoneNumber == "" {
				uu.ClearPhoneNumber()
			} else {
				uu.SetPhoneNumber(*up.PhoneNumber)
			}
		}
		if err := uu.Exec(ctx); err != nil {
			return uniqueViolation(err)
		}
		if up.Username != nil {
			if err := s.checkName(ctx, tx, userID, key); err != nil {
				return err
			}
		}
		if up.Description != nil {
			pu := tx.Profile.UpdateOneID(userID)
			if *up.Description == "" {
				pu.ClearDescription()
			} else {
				pu.SetDescription(*up.Description)
			}
			if err := pu.Exec(ctx); err != nil {
				return fmt.Errorf("update profile: %w", err)
			}
		}
		return nil
	})
}

// searchCursor is the position after the last user of a page: its search
// key (searchKey) and id.
type searchCursor struct {
	Key string `json:"u"`
	ID  int    `json:"i"`
}

func encodeCursor(c searchCursor) string {
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string) (searchCursor, error) {
	var c searchCursor
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil || c.ID <= 0 || strings.ContainsRune(c.Key, 0) {
		return c, connect.NewError(connect.CodeInvalidArgument, errors.New("page_token: not a token from this method"))
	}
	return c, nil
}

// likeEscaper makes a string match literally in LIKE ... ESCAPE '\'.
var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)

// searchKey is what search matches and orders by: the username's key, or
// while it has none, its name in lower case (users_username_search_order
// indexes it, with the id).
func searchKey(sel *sql.Selector) string {
	return "coalesce(" + sel.C(user.FieldUsernameKey) + ", lower(" + sel.C(user.FieldUsername) + "))"
}

// searchKeyOf is searchKey of one loaded user.
func searchKeyOf(u *ent.User) string {
	if u.UsernameKey != nil {
		return *u.UsernameKey
	}
	return strings.ToLower(u.Username)
}

// search returns up to limit users whose username starts with prefix, in
// any case or width, ordered by searchKey then id, after the cursor,
// leaving out those being deleted.
//
// On PostgreSQL the key is compared in byte order (COLLATE "C"), as
// SQLite compares it, so that the index users_username_search_order
// answers the prefix, the order and the cursor at once.
func (s *store) search(ctx context.Context, prefix string, after *searchCursor, limit int) ([]*ent.User, error) {
	collate := ""
	if s.db.Dialect == dialect.Postgres {
		collate = ` COLLATE "C"`
	}
	q := s.db.Ent.User.Query().Where(notDeleted(), func(sel *sql.Selector) {
		key := searchKey(sel) + collate
		sel.Where(sql.P(func(b *sql.Builder) {
			b.WriteString(key).WriteString(" LIKE ").Arg(likeEscaper.Replace(usernameKey(prefix)) + "%").WriteString(` ESCAPE '\'`)
		}))
		if after != nil {
			sel.Where(sql.P(func(b *sql.Builder) {
				b.WriteString("(").WriteString(key).WriteString(", ").Ident(sel.C(user.FieldID)).WriteString(") > (").
					Arg(after.Key).WriteString(", ").Arg(after.ID).WriteString(")")
			}))
		}
	}).Order(func(sel *sql.Selector) {
		sel.OrderExpr(sql.ExprP(searchKey(sel) + collate))
	}, ent.Asc(user.FieldID)).Limit(limit)
	return withDetails(q).All(ctx)
}

// listAvatars lists the user's avatars, newest first, or only the active
// one.
func (s *store) listAvatars(ctx context.Context, userID int, activeOnly bool) ([]*ent.Avatar, error) {
	// Those of an account being deleted are not: it is gone for others.
	q := s.db.Ent.Avatar.Query().Where(avatar.UserID(userID), avatar.HasUserWith(notDeleted()))
	if activeOnly {
		q = q.Where(avatar.IsActive(true))
	}
	return q.Order(ent.Desc(avatar.FieldUploadedAt), ent.Desc(avatar.FieldID)).All(ctx)
}

var errNoAvatar = connect.NewError(connect.CodeNotFound, errors.New("no such avatar"))

// lockedAvatar locks the user's avatars for the transaction and returns
// one of them, or errNoAvatar when the user has no such avatar.
func (s *store) lockedAvatar(ctx context.Context, tx *ent.Tx, userID, avatarID int) (*ent.Avatar, error) {
	if err := s.lockUser(ctx, tx, userID); err != nil {
		return nil, err
	}
	a, err := tx.Avatar.Query().Where(avatar.ID(avatarID), avatar.UserID(userID)).Only(ctx)
	if ent.IsNotFound(err) {
		return nil, errNoAvatar
	}
	return a, err
}

// setActive makes the user's avatar the active one.
func (s *store) setActive(ctx context.Context, userID, avatarID int) (*ent.Avatar, error) {
	var out *ent.Avatar
	err := s.withTx(ctx, func(tx *ent.Tx) error {
		a, err := s.lockedAvatar(ctx, tx, userID, avatarID)
		if err != nil {
			return err
		}
		if a.IsActive {
			out = a
			return nil
		}
		if err := tx.Avatar.Update().Where(avatar.UserID(userID), avatar.IsActive(true)).SetIsActive(false).Exec(ctx); err != nil {
			return fmt.Errorf("deactivate avatar: %w", err)
		}
		out, err = tx.Avatar.UpdateOne(a).SetIsActive(true).Save(ctx)
		return err
	})
	return out, err
}

var errAvatarExists = errors.New("an avatar already serves this image")

var errTooManyAvatars = errors.New("the account has MaxAvatars avatars")

// addAvatar adds the uploaded image that claim reserves (and returns the
// URL of) as the user's active avatar; an image that is one of the user's
// avatars already (a retry, a double click) makes that avatar the active
// one.
func (s *store) addAvatar(ctx context.Context, userID int, claim func() (string, error)) (*ent.Avatar, error) {
	var out *ent.Avatar
	err := s.withTx(ctx, func(tx *ent.Tx) error {
		if err := s.lockUser(ctx, tx, userID); err != nil {
			return err
		}
		// The image is claimed under the user's lock too, so that a
		// DeleteAvatar of the avatar it serves (which detaches it under
		// that lock) comes wholly before or after.
		url, err := claim()
		if err != nil {
			return err
		}
		// Under the user's lock, so two AddAvatar of one image (a double
		// click) make one avatar.
		had, err := tx.Avatar.Query().Where(avatar.AvatarURL(url)).First(ctx)
		switch {
		case err == nil && had.UserID != userID:
			return errAvatarExists
		case err == nil && had.IsActive:
			out = had
			return nil
		case err != nil && !ent.IsNotFound(err):
			return err
		}
		if had == nil {
			// A new one, past the limit: the image keeps its claim, which
			// a later AddAvatar takes over (or clean-up ends).
			n, err := tx.Avatar.Query().Where(avatar.UserID(userID)).Count(ctx)
			if err != nil {
				return fmt.Errorf("count avatars: %w", err)
			}
			if n >= MaxAvatars {
				return errTooManyAvatars
			}
		}
		if err := tx.Avatar.Update().Where(avatar.UserID(userID), avatar.IsActive(true)).SetIsActive(false).Exec(ctx); err != nil {
			return fmt.Errorf("deactivate avatar: %w", err)
		}
		if had != nil {
			out, err = tx.Avatar.UpdateOne(had).SetIsActive(true).Save(ctx)
			return err
		}
		out, err = tx.Avatar.Create().SetUserID(userID).SetAvatarURL(url).
			SetIsRandom(false).SetIsActive(true).SetUploadedAt(s.now()).Save(ctx)
		return err
	})
	return out, err
}

// avatarWithURL returns the id of the avatar that serves url.
func (s *store) avatarWithURL(ctx context.Context, url string) (int, bool, error) {
	a, err := s.db.Ent.Avatar.Query().Where(avatar.AvatarURL(url)).First(ctx)
	if ent.IsNotFound(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return a.ID, true, nil
}

// deleteAvatar removes the user's avatar, once before, called in its
// transaction with the avatar locked, succeeds. If it was the active one,
// the newest remaining avatar becomes active, or a new identicon when none
// remains. It returns the active avatar afterwards, and the deleted one.
func (s *store) deleteAvatar(ctx context.Context, userID, avatarID int, before func(*ent.Avatar) error) (active, deleted *ent.Avatar, _ error) {
	err := s.withTx(ctx, func(tx *ent.Tx) error {
		a, err := s.lockedAvatar(ctx, tx, userID, avatarID)
		if err != nil {
			return err
		}
		if err := before(a); err != nil {
			return err
		}
		deleted = a
		if err := tx.Avatar.DeleteOne(a).Exec(ctx); err != nil {
			return fmt.Errorf("delete avatar: %w", err)
		}
		if !a.IsActive {
			active, err = tx.Avatar.Query().Where(avatar.UserID(userID), avatar.IsActive(true)).Only(ctx)
			return err
		}
		next, err := tx.Avatar.Query().Where(avatar.UserID(userID)).
			Order(ent.Desc(avatar.FieldUploadedAt), ent.Desc(avatar.FieldID)).First(ctx)
		switch {
		case ent.IsNotFound(err):
			active, err = tx.Avatar.Create().SetUserID(userID).SetAvatarURL(newIdenticonURL()).
				SetIsRandom(true).SetIsActive(true).SetUploadedAt(s.now()).Save(ctx)
			return err
		case err != nil:
			return err
		}
		active, err = tx.Avatar.UpdateOne(next).SetIsActive(true).Save(ctx)
		return err
	})
	return active, deleted, err
}
