package chat

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// What a deleted account leaves in the chats (AuthService.DeleteAccount):
//
//   - It leaves every group as LeaveChat leaves one, and the other members
//     get the same member_removed event. A group where it was the only
//     admin first gets its longest-standing remaining member as admin
//     (a role_changed event): participants are kept in the order members
//     joined (a creator first, then members as they were added or joined;
//     leaving keeps the order; chats from before Parley were ordered by
//     their joinedAt when upgraded), so that member is the first other
//     participant.
//   - Its private chats stay, with it as a participant, so that the other
//     member keeps the history and still sees with whom it was; the user
//     package answers for the deleted account as for one that blocked
//     everyone, so sends into the chat are refused (PERMISSION_DENIED, as
//     any refused send; and so are reactions, edits and pins there, which
//     nobody would hear of), and nobody can start a new one with it (it is
//     missing to MissingUsers: NOT_FOUND). The other member gets a
//     chat_updated event.
//   - Its messages, their files, reactions and pins stay, attributed to its
//     id (User.deleted says what it is); what was its own in each chat,
//     its settings and the messages it deleted for itself, goes.
//   - A chat it leaves without readers goes, with everything in it, ten
//     minutes later (Service.Purge): a group whose last member it was, a
//     private chat whose other member's account is deleted too.

// maxHandOvers bounds the attempts at leaving a group whose new admin is
// demoted (by itself) before the deleted user is out.
const maxHandOvers = 10

// LeaveAll takes a user whose account is being deleted out of every chat
// it is in (see above). It is idempotent: run again, it finds only the
// private chats, and does for them again what it did.
func (s *Service) LeaveAll(ctx context.Context, userID int) error {
	chats, err := s.store.chatsOf(ctx, userID)
	if err != nil {
		return err
	}
	var errs []error
	for i := range chats {
		c := &chats[i]
		if c.Type == typeGroup {
			err = s.leaveDeleted(ctx, c.ID, userID)
		} else {
			err = s.closePrivate(ctx, c, userID)
		}
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			// One chat that fails must not keep the user in the others.
			errs = append(errs, fmt.Errorf("chat %s: %w", c.ID.Hex(), err))
			continue
		}
		if err := s.forgetMember(ctx, c.ID, userID); err != nil {
			errs = append(errs, fmt.Errorf("chat %s: %w", c.ID.Hex(), err))
		}
	}
	return errors.Join(errs...)
}

// leaveDeleted takes the user out of the group through leave, the path of
// LeaveChat, after handing the group over when the user is its only
// admin.
func (s *Service) leaveDeleted(ctx context.Context, chatID bson.ObjectID, userID int) error {
	for range maxHandOvers {
		successor, err := s.handOver(ctx, chatID, userID)
		if err != nil {
			return err
		}
		if successor != 0 {
			s.announce(ctx, chatID, roleChanged, userID, successor)
		}
		err = s.leave(ctx, chatID, userID, userID)
		switch {
		case errors.Is(err, errNotFound):
			return nil // left already
		case errors.Is(err, errLastAdmin):
			continue // the new admin stepped down meanwhile
		case err != nil:
			return err
		}
		upTo := s.store.nowMs()
		if s.announce(ctx, chatID, memberRemoved, userID, userID) {
			s.changesAnnounced(ctx, chatID, departures, []int{userID}, userID, upTo)
		}
		return nil
	}
	return fmt.Errorf("leave group: still its only admin after %d hand-overs", maxHandOvers)
}

// handOver makes the group's longest-standing other member admin if the
// user is its only admin, and returns that member (0: no change needed,
// or nobody to hand over to).
func (s *Service) handOver(ctx context.Context, chatID bson.ObjectID, userID int) (int, error) {
	successor := 0
	_, err := s.store.changeMembers(ctx, chatID, userID, func(c *chatDoc) ([]participantDoc, error) {
		successor = 0
		me := c.participant(userID)
		others := slices.DeleteFunc(slices.Clone(c.Participants), func(p participantDoc) bool { return p.UserID == userID })
		if me == nil || me.Role != roleAdmin || len(others) == 0 || slices.ContainsFunc(others, isAdmin) {
			return nil, errNoChange
		}
		parts := slices.Clone(c.Participants)
		i := slices.IndexFunc(parts, func(p participantDoc) bool { return p.UserID != userID })
		parts[i].Role = roleAdmin
		successor = parts[i].UserID
		return parts, nil
	})
	if errors.Is(err, errNoChat) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("hand the group over: %w", err)
	}
	return successor, nil
}

// closePrivate makes every instance check sends into the private chat
// again, now that the user package refuses them for the deleted user (a
// send checked before is refused once this began, see sendCache), and
// tells the other member; or, when that member's account is deleted too,
// records the chat for Purge.
func (s *Service) closePrivate(ctx context.Context, c *chatDoc, userID int) error {
	if err := s.store.changing(ctx, c.ID, func(context.Context) error { return nil }); err != nil {
		return err
	}
	s.announce(ctx, c.ID, chatUpdated, userID)
	// The second of its members to be deleted (the two tombstones are
	// written before either leaves, so the later leaving sees both)
	// leaves it to Purge.
	readers, err := s.readers(ctx, c)
	if err != nil || readers {
		return err
	}
	return s.store.markEmpty(ctx, c.ID)
}

// forgetMember deletes what was the user's own in a chat: its settings and
// the messages it deleted for itself.
func (s *Service) forgetMember(ctx context.Context, chatID bson.ObjectID, userID int) error {
	if err := s.store.forgetSettings(ctx, chatID, userID); err != nil {
		return err
	}
	if _, err := s.store.hidden.DeleteMany(ctx, bson.D{{Key: "chatId", Value: chatID}, {Key: "userId", Value: userID}}); err != nil {
		return fmt.Errorf("forget hidden messages: %w", err)
	}
	return nil
}

// announce publishes a chat event of the deletion, and reports whether
// it did. A failure is logged, not returned: the change is made, and a
// retry of the sweep announces only a departure again (see
// memberChangeDoc).
func (s *Service) announce(ctx context.Context, chatID bson.ObjectID, kind string, actor int, users ...int) bool {
	if err := s.publishChat(ctx, chatID, kind, actor, users...); err != nil {
		s.log.WarnContext(ctx, "announce a deleted member's change", "chat", chatID.Hex(), "kind", kind, "err", err)
		return false
	}
	return true
}
