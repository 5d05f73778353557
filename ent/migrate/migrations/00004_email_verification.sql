-- Email verification and change: when the address was verified (null
-- until then, so every existing account starts unverified), and the new
-- address a change asked for until it is verified.

-- +goose Up
ALTER TABLE "users" ADD COLUMN "email_verified_at" timestamptz NULL;
ALTER TABLE "users" ADD COLUMN "pending_email" character varying(100) NULL;

-- +goose Down
ALTER TABLE "users" DROP COLUMN "pending_email";
ALTER TABLE "users" DROP COLUMN "email_verified_at";
