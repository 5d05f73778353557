-- SearchUsers matches a prefix of the search key and pages in the order
-- of the key and the id. The text_pattern_ops index answered the prefix
-- alone: a short one ("a") read every user it matched and sorted them
-- all, on every page. An index on the key under the "C" collation (byte
-- order, which a LIKE prefix can use too) and the id answers the prefix,
-- the order and the cursor, reading one page's rows.

-- +goose Up
CREATE INDEX "users_username_search_order" ON "users" ((coalesce("username_key", lower("username")) COLLATE "C"), "user_id");
DROP INDEX "users_username_search";

-- +goose Down
CREATE INDEX "users_username_search" ON "users" ((coalesce("username_key", lower("username"))) text_pattern_ops);
DROP INDEX "users_username_search_order";
