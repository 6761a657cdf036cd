// Stand-ins for the `context` that APIM hands to policy expressions, limited to the members the
// policy expression reference documents (learn.microsoft.com/azure/api-management/api-management-policy-expressions).
// Behaviour the policies depend on is modelled on the documented one:
//   - Body.As<T>() without preserveContent consumes the body (a later read gets nothing);
//   - context.Variables.GetValueOrDefault<T> returns the default for a missing variable and throws
//     when the stored value is not a T;
//   - header lookups are case-insensitive and GetValueOrDefault joins values with ",".
using System;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using Newtonsoft.Json.Linq;

namespace Apim
{
    public interface IMessageBody
    {
        T As<T>(bool preserveContent = false);
    }

    public interface IUrl
    {
        string Host { get; }
        string Path { get; }
        int Port { get; }
        IReadOnlyDictionary<string, string[]> Query { get; }
        string QueryString { get; }
        string Scheme { get; }
    }

    public interface IRequest
    {
        IMessageBody Body { get; }
        IReadOnlyDictionary<string, string[]> Headers { get; }
        string IpAddress { get; }
        IReadOnlyDictionary<string, string> MatchedParameters { get; }
        string Method { get; }
        IUrl OriginalUrl { get; }
        IUrl Url { get; }
    }

    public interface IResponse
    {
        IMessageBody Body { get; }
        IReadOnlyDictionary<string, string[]> Headers { get; }
        int StatusCode { get; }
        string StatusReason { get; }
    }

    public interface IApi
    {
        string Id { get; }
        string Name { get; }
        string Path { get; }
        string Revision { get; }
        string Version { get; }
        bool IsCurrentRevision { get; }
    }

    public interface IOperation
    {
        string Id { get; }
        string Method { get; }
        string Name { get; }
        string UrlTemplate { get; }
    }

    public interface IProduct
    {
        string Id { get; }
        string Name { get; }
    }

    public interface ISubscription
    {
        string Id { get; }
        string Key { get; }
        string Name { get; }
        string PrimaryKey { get; }
        string SecondaryKey { get; }
    }

    public interface IUser
    {
        string Email { get; }
        string FirstName { get; }
        string Id { get; }
        string LastName { get; }
    }

    public interface IDeployment
    {
        string GatewayId { get; }
        string Region { get; }
        string ServiceName { get; }
    }

    public interface IContext
    {
        IApi Api { get; }
        IDeployment Deployment { get; }
        TimeSpan Elapsed { get; }
        IOperation Operation { get; }
        IProduct Product { get; }
        IRequest Request { get; }
        Guid RequestId { get; }
        IResponse Response { get; }
        ISubscription Subscription { get; }
        DateTime Timestamp { get; }
        bool Tracing { get; }
        IUser User { get; }
        IReadOnlyDictionary<string, object> Variables { get; }
        void Trace(string message);
    }

    public static class ContextExtensions
    {
        public static T GetValueOrDefault<T>(this IReadOnlyDictionary<string, object> variables, string variableName, T defaultValue = default(T))
        {
            object value;
            if (!variables.TryGetValue(variableName, out value)) { return defaultValue; }
            return (T)value;  // throws, as APIM does, when the stored value is not a T
        }

        public static string GetValueOrDefault(this IReadOnlyDictionary<string, string[]> values, string name, string defaultValue = null)
        {
            string[] found;
            if (!values.TryGetValue(name, out found) || found == null) { return defaultValue; }
            return string.Join(",", found);
        }
    }

    // ---- implementations, filled from the JSON snapshot the test sends ----

    public sealed class MessageBody : IMessageBody
    {
        readonly string text;
        public bool Consumed;
        // Any read at all: reading a streamed response makes APIM buffer it (the tests check streams are never read).
        public bool Read;

        public MessageBody(string text, bool consumed) { this.text = text ?? ""; Consumed = consumed; }

        public T As<T>(bool preserveContent = false)
        {
            Read = true;
            var content = Consumed ? "" : text;
            if (!preserveContent) { Consumed = true; }
            object value;
            if (typeof(T) == typeof(string)) { value = content; }
            else if (typeof(T) == typeof(byte[])) { value = Encoding.UTF8.GetBytes(content); }
            else if (typeof(T) == typeof(JObject)) { value = JObject.Parse(content); }
            else if (typeof(T) == typeof(JArray)) { value = JArray.Parse(content); }
            else if (typeof(T) == typeof(JToken)) { value = JToken.Parse(content); }
            else { throw new NotSupportedException("As<" + typeof(T).Name + "> is not modelled by the stand-in"); }
            return (T)value;
        }
    }

    public sealed class Url : IUrl
    {
        public string Host { get; set; }
        public string Path { get; set; }
        public int Port { get; set; }
        public IReadOnlyDictionary<string, string[]> Query { get; set; }
        public string QueryString { get; set; }
        public string Scheme { get; set; }
    }

    public sealed class Request : IRequest
    {
        public MessageBody BodyImpl;
        public IMessageBody Body { get { return BodyImpl; } }
        public IReadOnlyDictionary<string, string[]> Headers { get; set; }
        public string IpAddress { get; set; }
        public IReadOnlyDictionary<string, string> MatchedParameters { get; set; }
        public string Method { get; set; }
        public IUrl OriginalUrl { get; set; }
        public IUrl Url { get; set; }
    }

    public sealed class Response : IResponse
    {
        public MessageBody BodyImpl;
        public IMessageBody Body { get { return BodyImpl; } }
        public IReadOnlyDictionary<string, string[]> Headers { get; set; }
        public int StatusCode { get; set; }
        public string StatusReason { get; set; }
    }

    public sealed class Api : IApi
    {
        public string Id { get; set; }
        public string Name { get; set; }
        public string Path { get; set; }
        public string Revision { get; set; }
        public string Version { get; set; }
        public bool IsCurrentRevision { get; set; }
    }

    public sealed class Operation : IOperation
    {
        public string Id { get; set; }
        public string Method { get; set; }
        public string Name { get; set; }
        public string UrlTemplate { get; set; }
    }

    public sealed class Product : IProduct
    {
        public string Id { get; set; }
        public string Name { get; set; }
    }

    public sealed class Subscription : ISubscription
    {
        public string Id { get; set; }
        public string Key { get; set; }
        public string Name { get; set; }
        public string PrimaryKey { get; set; }
        public string SecondaryKey { get; set; }
    }

    public sealed class User : IUser
    {
        public string Email { get; set; }
        public string FirstName { get; set; }
        public string Id { get; set; }
        public string LastName { get; set; }
    }

    public sealed class Deployment : IDeployment
    {
        public string GatewayId { get; set; }
        public string Region { get; set; }
        public string ServiceName { get; set; }
    }

    public sealed class Context : IContext
    {
        public IApi Api { get; set; }
        public IDeployment Deployment { get; set; }
        public TimeSpan Elapsed { get; set; }
        public IOperation Operation { get; set; }
        public IProduct Product { get; set; }
        public IRequest Request { get; set; }
        public Guid RequestId { get; set; }
        public IResponse Response { get; set; }
        public ISubscription Subscription { get; set; }
        public DateTime Timestamp { get; set; }
        public bool Tracing { get; set; }
        public IUser User { get; set; }
        public IReadOnlyDictionary<string, object> Variables { get; set; }
        public readonly List<string> Traces = new List<string>();
        public void Trace(string message) { Traces.Add(message); }
    }
}
