package chat

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

func toRole(r string) parleyv1.Role {
	if r == roleAdmin {
		return parleyv1.Role_ROLE_ADMIN
	}
	return parleyv1.Role_ROLE_MEMBER
}

// toChat renders a chat for one of its members.
func toChat(c *chatDoc, m member, unread unreadCounts) *parleyv1.Chat {
	out := &parleyv1.Chat{
		Id:                 c.ID.Hex(),
		Type:               parleyv1.ChatType_CHAT_TYPE_GROUP,
		Name:               c.Name,
		Description:        c.Description,
		AvatarUrl:          c.AvatarURL,
		CreatedAt:          timestamppb.New(c.CreatedAt),
		UpdatedAt:          timestamppb.New(c.UpdatedAt),
		Role:               toRole(m.Role),
		UnreadCount:        unread.messages,
		UnreadMentionCount: unread.mentions,
	}
	if c.Type == typePrivate {
		out.Type = parleyv1.ChatType_CHAT_TYPE_PRIVATE
	}
	for _, p := range c.Participants {
		out.Participants = append(out.Participants, &parleyv1.Participant{UserId: int32(p.UserID), Role: toRole(p.Role)})
	}
	if c.Request != nil {
		out.Request = &parleyv1.ChatRequest{StarterId: int32(c.Request.StarterID)}
	}
	if lm := c.LastMessage; lm != nil {
		out.LastMessage = &parleyv1.LastMessage{
			MessageId: lm.MessageID.Hex(),
			SenderId:  int32(lm.SenderID),
			Preview:   lm.Preview,
			Seq:       lm.Seq,
			SentAt:    timestamppb.New(lm.SentAt),
		}
	}
	return out
}
