//! The OpenAPI 3.1 document, served at `/openapi.json` with Swagger UI (vendored, works offline)
//! at `/docs`.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    admin, analytics, conversations, health, lifecycle, live, messages, operations, search, tenants, transfer,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Memory Layer API", description = "Conversation memory for AI chat products: store messages, find the ones that matter."),
    paths(
        messages::create_message, messages::create_messages, messages::get_message,
        messages::archive_message, messages::restore_message,
        lifecycle::update_message, lifecycle::delete_message, lifecycle::update_messages, lifecycle::delete_messages,
        lifecycle::delete_conversation, lifecycle::erase_tenant,
        conversations::list_conversations, conversations::create_conversation, conversations::get_conversation,
        conversations::update_conversation, conversations::conversation_stats,
        analytics::usage, analytics::trends, analytics::top_conversations, analytics::embeddings, analytics::tenants,
        transfer::export, transfer::import,
        search::search_memories, search::search_memories_post,
        tenants::get_ranking, tenants::put_ranking, tenants::delete_ranking,
        tenants::get_rate_limit, tenants::put_rate_limit, tenants::delete_rate_limit,
        tenants::get_retention, tenants::put_retention, tenants::delete_retention,
        admin::create_tenant, admin::list_tenants, admin::get_tenant, admin::delete_tenant,
        admin::create_key, admin::list_keys, admin::revoke_key, admin::run_retention,
        live::message_socket, live::search_socket, live::event_stream, operations::get_operation,
        health::healthz, health::readyz, health::metrics, health::admin_health, health::admin_readiness,
    ),
    components(schemas(
        common::domain::MessageInput, common::domain::MessageView, common::domain::MessageStatus,
        common::domain::Role, common::domain::FieldError,
        common::contract::SearchResponse, common::contract::SearchHit, common::contract::Explain,
        common::domain::SearchMode, common::domain::SearchFilters, common::domain::Ranking,
        search::SearchBody, tenants::TenantRanking, common::contract::SettingSource, tenants::RankingPatch,
        tenants::TenantRateLimit, tenants::RateLimitChange, common::contract::RetentionPolicyReply,
        common::domain::RetentionPolicy,
        common::domain::Tenant, common::domain::ApiKey, common::domain::Scope,
        admin::CreateTenant, admin::TenantList, admin::CreateKey, admin::CreatedKey, admin::RetentionRun,
        common::contract::RetentionRunResponse, common::domain::TenantRetention, common::domain::RetentionAction,
        messages::BatchRequest, messages::BatchResponse, messages::BatchItem, messages::ItemStatus, messages::Wait,
        common::domain::MessageUpdate, common::contract::MessageEdit, common::contract::DeleteMessagesResponse,
        common::contract::Deleted, common::contract::ExportRecord, common::contract::ExportVector,
        lifecycle::BatchUpdate, lifecycle::BatchUpdateResponse, lifecycle::ItemError, lifecycle::BatchDelete,
        transfer::ImportResponse, transfer::LineError,
        crate::error::Problem, crate::error::VersionProblem, health::Health, health::AdminHealth,
        health::AdminReadiness, messages::MessageBody, conversations::ConversationBody,
        conversations::ConversationList, conversations::CreateConversation, conversations::UpdateConversation,
        conversations::ConversationStats, analytics::UsageBody, analytics::TrendDay, analytics::TopConversation,
        analytics::EmbeddingStats, analytics::TenantUsageBody, messages::BatchError, lifecycle::BatchDeleteResponse,
        crate::live::LiveEvent, operations::OperationBody,
    )),
    modifiers(&Security, &Descriptions),
    tags(
        (name = "messages", description = "Ingest and read messages"),
        (name = "search", description = "Find relevant messages"),
        (name = "conversations", description = "Conversations: titles, metadata, counts"),
        (name = "analytics", description = "Usage, trends, top conversations, embedding outcomes"),
        (name = "live", description = "Message events as they happen (WebSocket, Server-Sent Events) and searches over a WebSocket"),
        (name = "long-running", description = "Long work (deletes of conversations and tenants, retention runs) followed after its request"),
        (name = "tenants", description = "Per-tenant settings"),
        (name = "admin", description = "Tenants and API keys"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))));
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Gives every response without a description its status's reason phrase ("Bad Request"):
/// OpenAPI requires one, and client generators refuse documents without.
struct Descriptions;

impl Modify for Descriptions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, response) in &mut operation.responses.responses {
                    if let utoipa::openapi::RefOr::T(response) = response
                        && response.description.is_empty()
                    {
                        response.description = status
                            .parse::<u16>()
                            .ok()
                            .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("Response")
                            .to_owned();
                    }
                }
            }
        }
    }
}
